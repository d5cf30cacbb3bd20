ALTER TABLE inbox DROP COLUMN lease_until, DROP COLUMN leased_by;
