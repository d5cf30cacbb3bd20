-- Erasure: one audit row per erased contact, keyed by its marker (the
-- hash that replaced its key in every table); a redelivery of a message
-- sent before `erased_at` is recognised by it and dropped as a duplicate.
CREATE TABLE erasures (
    phone         TEXT        PRIMARY KEY,
    erased_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    requested_by  TEXT,
    counts        JSONB       NOT NULL
);
COMMENT ON TABLE erasures IS 'Erased contacts: the marker that replaced the key, when, who asked, the rows blanked per table (no personal data).';
-- Retention reads by age; BRIN indexes cost the inserts next to nothing.
CREATE INDEX messages_age ON messages USING brin (created_at);
CREATE INDEX inbox_age ON inbox USING brin (received_at);
CREATE INDEX dead_letters_age ON dead_letters USING brin (created_at);
CREATE INDEX outbox_age ON outbox USING brin (created_at);
