DROP INDEX dead_letters_dedupe_key;
ALTER TABLE dead_letters DROP COLUMN dedupe_key;
DELETE FROM dead_letters WHERE source = 'webhook';
COMMENT ON TABLE dead_letters IS 'Poison inbound messages and undeliverable outbound ones, with the reason; replayable.';
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_source_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_source_check CHECK (source IN ('inbox', 'outbox'));
