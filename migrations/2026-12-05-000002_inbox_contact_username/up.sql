-- A user with a WhatsApp username may share no phone: the console shows
-- the username (contacts[].profile.username) beside the profile name, from
-- the contact's latest message, like contact_name.
ALTER TABLE inbox ADD COLUMN contact_username text;
