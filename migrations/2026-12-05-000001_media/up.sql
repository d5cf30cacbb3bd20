-- A media message (image, audio, video, document, sticker) names its file
-- by a Graph API media id; the file is fetched by a durable job: this row,
-- written in the transaction that applies the message, claimed by one
-- process at a time (SKIP LOCKED; a claim moves next_attempt_at a lease
-- ahead, so a job whose process died is claimed again), retried with backoff, and
-- marked downloaded (with where the file is) or failed (with the reason).
CREATE TABLE media (
    phone               TEXT        NOT NULL,
    media_id            TEXT        NOT NULL,
    provider_message_id TEXT        NOT NULL,
    kind                TEXT        NOT NULL,
    mime_type           TEXT,
    sha256              TEXT,
    caption             TEXT,
    status              TEXT        NOT NULL DEFAULT 'pending'
                                    CHECK (status IN ('pending', 'downloaded', 'failed')),
    attempts            INT4        NOT NULL DEFAULT 0,
    next_attempt_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    path                TEXT,
    bytes               INT8,
    last_error          TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (phone, media_id)
);
CREATE INDEX media_due ON media (next_attempt_at) WHERE status = 'pending';
COMMENT ON TABLE media IS
    'Inbound media files to fetch from the Graph API (one durable job per file: pending, downloaded with its path, or failed with the reason).';
