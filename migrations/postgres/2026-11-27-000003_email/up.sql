-- Email fallback (issue 4): preferences, the items waiting out their delay,
-- the durable outbox and the batches it is sent in. Same SQL on both
-- backends: ids are text, times unix milliseconds, flags BOOLEAN.

-- Email on/off per kind; no row means the defaults (marketing off).
-- `chat_delay_secs` NULL means the server's delays apply to chat.
CREATE TABLE email_preferences (
    user_id TEXT PRIMARY KEY NOT NULL,
    chat BOOLEAN NOT NULL,
    booking BOOLEAN NOT NULL,
    support BOOLEAN NOT NULL,
    marketing BOOLEAN NOT NULL,
    chat_delay_secs BIGINT,
    updated_at BIGINT NOT NULL
);

-- One row per (recipient, unread thing): a chat message (`message:<id>`) or
-- a notification (`notification:<id>`). `due_at` is when it is looked at
-- next; `state` leaves `pending` once it is emailed or dropped (read, kind
-- turned off, no address, gone). Rows are kept for a while after that so a
-- catch-up after a crash recognises them (the unique source).
CREATE TABLE email_items (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    room TEXT,
    seq BIGINT,
    message_id TEXT,
    notification_id TEXT,
    created_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    outbox_id TEXT,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX email_items_source ON email_items (user_id, source);
CREATE INDEX email_items_due ON email_items (state, due_at);
CREATE INDEX email_items_created ON email_items (created_at);

-- Rendered emails, stored before any attempt to send them.
-- `state`: queued, sent or failed. `solo` emails are sent one per request
-- (after a batch they were in was refused as a whole).
CREATE TABLE email_outbox (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    to_address TEXT NOT NULL,
    subject TEXT NOT NULL,
    html TEXT NOT NULL,
    text TEXT NOT NULL,
    unsubscribe_url TEXT,
    item_count BIGINT NOT NULL,
    state TEXT NOT NULL,
    solo BOOLEAN NOT NULL,
    batch_id TEXT,
    provider_id TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX email_outbox_unbatched ON email_outbox (state, batch_id, created_at);
CREATE INDEX email_outbox_batch ON email_outbox (batch_id);
CREATE INDEX email_outbox_user ON email_outbox (user_id);

-- One request to Resend: its id is the request's Idempotency-Key, so a
-- retry (after a timeout, a crash or a lost lease) is the same request with
-- the same emails. A node sends a batch while its lease (`claimed_until`)
-- runs. `state`: pending, sent, failed or split.
CREATE TABLE email_batches (
    id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    email_count BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_by TEXT,
    claimed_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX email_batches_due ON email_batches (state, next_attempt_at);

-- The catch-up after a restart reads recent messages and notifications by time.
CREATE INDEX messages_sent_at ON messages (sent_at);
CREATE INDEX notifications_created_at ON notifications (created_at);
