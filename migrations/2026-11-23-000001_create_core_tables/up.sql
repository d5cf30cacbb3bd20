-- The conversation state machine: one row per phone, written only through a
-- version check (optimistic locking). `version` counts applied transitions.
CREATE TABLE sessions (
    phone       TEXT        NOT NULL PRIMARY KEY,
    flow_state  TEXT        NOT NULL,
    data        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    version     BIGINT      NOT NULL DEFAULT 0 CHECK (version >= 0),
    handoff     BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMENT ON TABLE sessions IS 'Conversation state per phone; every update checks and bumps version (no lost update).';

-- Every inbound delivery, registered atomically before the webhook is acked.
-- A redelivery of the same provider message id bumps delivery_count instead.
CREATE TABLE inbox (
    id                   BIGSERIAL   NOT NULL,
    phone                TEXT        NOT NULL,
    provider_message_id  TEXT        NOT NULL,
    payload              JSONB       NOT NULL,
    received_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivery_count       INTEGER     NOT NULL DEFAULT 1 CHECK (delivery_count >= 1),
    last_delivery_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at         TIMESTAMPTZ,
    attempts             INTEGER     NOT NULL DEFAULT 0,
    last_error           TEXT,
    PRIMARY KEY (phone, id),
    UNIQUE (phone, provider_message_id)
);
COMMENT ON TABLE inbox IS 'Inbound deliveries, deduplicated by provider message id; processed_at is set in the transaction that applies the message.';
CREATE INDEX inbox_unprocessed ON inbox (phone, id) WHERE processed_at IS NULL;

-- The conversation transcript, both directions.
CREATE TABLE messages (
    id                   BIGSERIAL   NOT NULL,
    phone                TEXT        NOT NULL,
    direction            TEXT        NOT NULL CHECK (direction IN ('in', 'out')),
    origin               TEXT        NOT NULL CHECK (origin IN ('user', 'bot', 'agent')),
    body                 TEXT        NOT NULL,
    inbox_id             BIGINT,
    provider_message_id  TEXT,
    status               TEXT        NOT NULL DEFAULT 'received',
    error                TEXT,
    -- For outbound messages: the outbox row that delivers it.
    outbox_key           TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (phone, id)
);
COMMENT ON TABLE messages IS 'Conversation transcript (customer, bot and agent messages) with delivery status of outbound ones.';
CREATE INDEX messages_provider_id ON messages (phone, provider_message_id) WHERE provider_message_id IS NOT NULL;

-- Side effects written in the same transaction as the state change, delivered
-- later by the dispatcher (claimed with FOR UPDATE SKIP LOCKED).
CREATE TABLE outbox (
    id                   BIGSERIAL   NOT NULL,
    phone                TEXT        NOT NULL,
    kind                 TEXT        NOT NULL,
    payload              JSONB       NOT NULL,
    idempotency_key      TEXT        NOT NULL,
    status               TEXT        NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'dead')),
    attempts             INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error           TEXT,
    provider_message_id  TEXT,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (phone, id),
    UNIQUE (phone, idempotency_key)
);
COMMENT ON TABLE outbox IS 'Outbound side effects committed with the transition that caused them; each row is sent successfully at most once.';
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status IN ('pending', 'sending');

-- What terminal flow states record: a report, a ticket.
CREATE TABLE outcomes (
    id          BIGSERIAL   NOT NULL,
    phone       TEXT        NOT NULL,
    kind        TEXT        NOT NULL,
    ticket      TEXT        NOT NULL,
    data        JSONB       NOT NULL,
    inbox_id    BIGINT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (phone, id),
    UNIQUE (phone, ticket)
);
COMMENT ON TABLE outcomes IS 'Results recorded by terminal flow states (reports, tickets), written in the step transaction.';

-- What could not be processed or delivered, with the reason, for inspection and replay.
CREATE TABLE dead_letters (
    id          BIGSERIAL   NOT NULL,
    phone       TEXT        NOT NULL,
    source      TEXT        NOT NULL CHECK (source IN ('inbox', 'outbox')),
    source_id   BIGINT      NOT NULL,
    payload     JSONB       NOT NULL,
    reason      TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at TIMESTAMPTZ,
    PRIMARY KEY (phone, id)
);
COMMENT ON TABLE dead_letters IS 'Poison inbound messages and undeliverable outbound ones, with the reason; replayable.';
