-- A contact is known by its phone (wa_id), its business-scoped user ID
-- (BSUID), or both; either finds its conversation. Each identifier seen is
-- linked, once, to the conversation key (the phone when the contact was
-- first seen with one, else the BSUID). Links never change: a new phone or
-- a new BSUID (user_changed_number) is a new link to the same key.
CREATE TABLE contact_links (
    phone       TEXT        PRIMARY KEY,
    contact     TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
COMMENT ON TABLE contact_links IS
    'A contact identifier (phone or BSUID, in `phone`, the distribution column like every table''s) and the conversation key it leads to; rows never change.';
