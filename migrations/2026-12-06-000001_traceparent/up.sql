-- The W3C traceparent of the span that made the row: a message's trace
-- goes on from its inbox row to the step, and from its reply's outbox row
-- to the send, also after a restart. NULL when traces are off.
-- Expand only: nullable, no default (no rewrite), and processes that do
-- not know the column go on reading and writing the tables.
ALTER TABLE inbox ADD COLUMN traceparent TEXT;
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
