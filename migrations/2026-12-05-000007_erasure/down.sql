DROP INDEX outbox_age;
DROP INDEX dead_letters_age;
DROP INDEX inbox_age;
DROP INDEX messages_age;
DROP TABLE erasures;
