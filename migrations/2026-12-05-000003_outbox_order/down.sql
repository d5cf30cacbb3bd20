DROP TABLE send_budget;
DROP INDEX outbox_open;
