-- A message of a delivery that cannot be applied (malformed, a sender with
-- neither a phone nor a BSUID, over a limit) is kept as a dead letter with its reason
-- instead of failing the delivery: source 'webhook' (it never reached the
-- inbox). The provider redelivers a delivery it did not see acknowledged:
-- the key (the message id, or a hash of the raw JSON) keeps one letter per
-- message.
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_source_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_source_check CHECK (source IN ('inbox', 'outbox', 'webhook'));
ALTER TABLE dead_letters ADD COLUMN dedupe_key text;
CREATE UNIQUE INDEX dead_letters_dedupe_key ON dead_letters (phone, dedupe_key) WHERE dedupe_key IS NOT NULL;
COMMENT ON TABLE dead_letters IS 'Poison inbound messages, undeliverable outbound ones (both replayable) and delivery items that could not be applied (source webhook, kept to be read), with the reason.';
