-- Time in a conversation. A timer is a row written in the transaction of the
-- step that sets it and cancelled in the transaction of the step that makes
-- it moot; when due, a process claims it (SKIP LOCKED, leased like the
-- outbox: a timer whose process died is claimed again after the lease) and
-- hands it to the conversation's actor, which applies it as a step: its
-- effects commit with its `fired` mark, at the next version.
CREATE TABLE timers (
    phone         TEXT        NOT NULL,
    id            BIGSERIAL   NOT NULL,
    -- `after` (a state's reminder or escalation), `expire` (an idle
    -- conversation starts over), `handoff` (no agent wrote: back to the bot).
    kind          TEXT        NOT NULL CHECK (kind IN ('after', 'expire', 'handoff')),
    due_at        TIMESTAMPTZ NOT NULL,
    -- What it does, resolved from the flow when it was set.
    action        JSONB       NOT NULL,
    status        TEXT        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'fired')),
    -- The session version of the step that set it, and of its own step.
    set_version   BIGINT      NOT NULL,
    fired_version BIGINT,
    fired_at      TIMESTAMPTZ,
    -- For a fired timer: `replied`, `template`, `skipped` (its free-form
    -- reply fell outside the 24-hour window and it has no template) or
    -- `silent` (nothing to say).
    outcome       TEXT,
    leased_by     BIGINT      NOT NULL DEFAULT 0,
    lease_until   TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (phone, id)
);
-- Pending timers cost an index entry while they wait; nothing else.
CREATE INDEX timers_due ON timers (due_at) WHERE status = 'pending';
-- A step replacing a conversation's timers finds its pending ones here:
-- not through the due index (every conversation's, with the entries of
-- cancelled timers until vacuum: 2.3 ms a conversation at 2,000 msg/s), not
-- through the primary key (every timer the conversation ever fired).
CREATE INDEX timers_pending ON timers (phone) WHERE status = 'pending';
COMMENT ON TABLE timers IS 'Durable conversation timers (reminders, expiry, hand-off timeouts): set and cancelled (deleted) in step transactions, fired once as steps.';

-- The customer-service window runs 24 hours from the customer's last
-- message, by that message's own timestamp (not when it reached us).
ALTER TABLE sessions ADD COLUMN last_customer_at TIMESTAMPTZ;

-- The session version a stepped message committed at: with the timers'
-- versions, the order of a conversation's inputs can be checked afterwards.
ALTER TABLE inbox ADD COLUMN version BIGINT;

-- Template states reported by `message_template_status_update` webhooks
-- (APPROVED, PAUSED, DISABLED, …): a template the provider stopped is
-- refused with the reason before it fails at the send API.
CREATE TABLE template_status (
    name       TEXT        NOT NULL,
    language   TEXT        NOT NULL,
    status     TEXT        NOT NULL,
    reason     TEXT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, language)
);
COMMENT ON TABLE template_status IS 'The latest status of each message template (name, language) as WhatsApp reported it.';

-- Conversations from before: their window runs from the last message received.
UPDATE sessions AS s SET last_customer_at = i.last
FROM (SELECT phone, max(received_at) AS last FROM inbox GROUP BY phone) AS i
WHERE i.phone = s.phone;
