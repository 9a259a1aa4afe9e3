-- A notification's optional `data` object from the backend (JSON text,
-- bounded by the API), delivered in the frame and the inbox.
ALTER TABLE notifications ADD COLUMN data TEXT;

-- `POST /v1/internal/users/{id}/disconnect`: tokens issued before this
-- moment (milliseconds) are refused.
ALTER TABLE users ADD COLUMN sessions_revoked_at BIGINT;

-- Internal POSTs with an `Idempotency-Key`: the first request's body hash
-- and answer. A repeat gets the answer; another body under the key, 409.
CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    -- 0 while the first request is being handled.
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
