-- Several engine processes share one database. The process that accepts a
-- message holds it (leased_by = its instance id) until lease_until; resume
-- (start-up, sweeps, actor activation) in another process only takes rows
-- whose lease has run out, i.e. whose process died or fell far behind.
-- Applying stays exactly-once either way (processed_at is checked in the
-- step transaction); the lease keeps processes from doing each other's work.
ALTER TABLE inbox
    ADD COLUMN leased_by   BIGINT      NOT NULL DEFAULT 0,
    ADD COLUMN lease_until TIMESTAMPTZ NOT NULL DEFAULT now();
