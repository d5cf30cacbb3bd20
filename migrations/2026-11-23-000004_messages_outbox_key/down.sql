DROP INDEX messages_outbox_key;
