DROP TABLE dead_letters;
DROP TABLE outcomes;
DROP TABLE outbox;
DROP TABLE messages;
DROP TABLE inbox;
DROP TABLE sessions;
