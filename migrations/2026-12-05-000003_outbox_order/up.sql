-- A conversation's outbound messages leave one at a time, in the order they
-- were committed: a row is claimed only while no earlier row of its
-- conversation is still open (pending or being sent). This index answers
-- "is there an earlier open row?" and "which is the conversation's next?"
-- without reading the sent rows.
CREATE INDEX outbox_open ON outbox (phone, id) WHERE status IN ('pending', 'sending');

-- The send rate of each business number holds for the deployment, not per
-- process: every process takes its sends of one wall-clock second from this
-- shared budget (a few at a time). Unlogged: a budget lives for a second; a
-- database crash that empties it costs at most one second's overshoot.
CREATE UNLOGGED TABLE send_budget (
    number     TEXT    NOT NULL,
    second     BIGINT  NOT NULL,
    used       INTEGER NOT NULL,
    -- What the last taker got (the upsert computes it from the old `used`).
    last_grant INTEGER NOT NULL,
    PRIMARY KEY (number, second)
);
COMMENT ON TABLE send_budget IS 'Sends per business number per wall-clock second, taken by every process from one budget (outbox.rate_per_s or the number''s own).';
