-- The named agent who wrote an agent message (`api.tokens` entries with a
-- name); NULL for the bot, the customer and anonymous tokens. Only added:
-- processes of the build before it keep writing without it.
ALTER TABLE messages ADD COLUMN author TEXT;
COMMENT ON COLUMN messages.author IS 'The named agent who wrote an agent message (NULL: anonymous, bot or customer).';
