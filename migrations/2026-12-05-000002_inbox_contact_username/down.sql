ALTER TABLE inbox DROP COLUMN contact_username;
