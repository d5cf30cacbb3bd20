-- A user with a WhatsApp username may share no phone: the console shows
-- the username (contacts[].profile.username) beside the profile name, from
-- the contact's latest message, like contact_name.
ALTER TABLE inbox ADD COLUMN contact_username text;
-- The latest username of a conversation, found without reading its rows
-- that carry none (most contacts have no username).
CREATE INDEX inbox_contact_username ON inbox (phone, id) WHERE contact_username IS NOT NULL;
