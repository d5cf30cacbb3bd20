-- The outbox records a send's result on its message by (phone, outbox_key).
-- Without an index that is a scan of all the phone's messages, which grows
-- with a busy conversation; only outbound messages carry a key.
CREATE INDEX messages_outbox_key ON messages (phone, outbox_key) WHERE outbox_key IS NOT NULL;
