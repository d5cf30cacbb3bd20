-- The sender's WhatsApp profile name, as given with the message (the
-- `contacts` block of the delivery). Kept beside the payload, which stays
-- exactly as received; the agent console lists it.
ALTER TABLE inbox ADD COLUMN contact_name text;
