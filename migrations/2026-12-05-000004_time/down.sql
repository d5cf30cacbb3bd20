DROP TABLE template_status;
ALTER TABLE inbox DROP COLUMN version;
ALTER TABLE sessions DROP COLUMN last_customer_at;
DROP TABLE timers;
