-- The event feed: every event the team's webhooks can hear, kept for a
-- while (`integrations.events_keep_s`), written in the transaction that
-- causes it, under its conversation's lock. A subscriber reads it in
-- (release, id) order: `release` is one more than the largest transaction
-- id among the event and every earlier event of its conversation, so an
-- event is read only once its transaction and every earlier one of its
-- conversation have ended (release <= the oldest running transaction):
-- nothing committed later can sort before what was read, and each
-- conversation's events come in the order they were written.
CREATE TABLE events (
    id          BIGSERIAL   NOT NULL,
    phone       TEXT        NOT NULL,
    kind        TEXT        NOT NULL,
    event_key   TEXT        NOT NULL,
    payload     JSONB       NOT NULL,
    release     BIGINT      NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (phone, id),
    UNIQUE (phone, event_key)
);
COMMENT ON TABLE events IS 'The event feed (SSE with Last-Event-ID): every event, kept for integrations.events_keep_s, read in (release, id) order.';
CREATE INDEX events_feed ON events (release, id);
-- BRIN: the retention job reads by age; a btree would cost every insert.
CREATE INDEX events_age ON events USING brin (created_at);
