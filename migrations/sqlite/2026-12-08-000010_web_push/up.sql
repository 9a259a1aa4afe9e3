-- Web Push (issue 18): the browsers users subscribed, their push switches
-- per kind, the durable queue of pushes, and the development VAPID key.
-- Same SQL on both backends: ids are text, times unix milliseconds.

-- One row per browser subscription (its endpoint is unique to it). The keys
-- are the browser's public key (`p256dh`) and auth secret, base64url.
CREATE TABLE push_subscriptions (
    endpoint TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_success_at BIGINT
);
CREATE INDEX push_subscriptions_user ON push_subscriptions (user_id);

-- Push on/off per kind, a row per switch a user changed; no row means the
-- kind's default. Rows rather than a column per kind beside the email
-- switches: a new kind needs no migration.
CREATE TABLE push_preferences (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, kind)
);

-- One push to one subscription, stored before it is sent. A node sends it
-- while it holds its lease (`claimed_until`); a sent push is deleted, a
-- given-up one kept (`state` = 'failed', `last_error`) for a week.
-- (`endpoint`, `source`) is unique: the same news is queued once per browser.
CREATE TABLE push_queue (
    id TEXT PRIMARY KEY NOT NULL,
    endpoint TEXT NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX push_queue_source ON push_queue (endpoint, source);
CREATE INDEX push_queue_due ON push_queue (state, next_attempt_at);
CREATE INDEX push_queue_user ON push_queue (user_id);

-- The VAPID key a development server generated for itself (production
-- configures `push.vapid_private_key` and never reads this).
CREATE TABLE push_vapid_keys (
    id TEXT PRIMARY KEY NOT NULL,
    private_key TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
