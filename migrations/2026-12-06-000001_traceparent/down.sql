ALTER TABLE outbox DROP COLUMN traceparent;
ALTER TABLE inbox DROP COLUMN traceparent;
