ALTER TABLE messages DROP COLUMN author;
