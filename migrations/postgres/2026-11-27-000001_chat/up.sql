-- Times are unix milliseconds (BIGINT) and ids are text on both backends,
-- so one Diesel schema serves SQLite and PostgreSQL.
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT,
    name TEXT,
    role TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    erased_at BIGINT
);

CREATE TABLE bookings (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    starts_at TEXT,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE booking_participants (
    booking_id TEXT NOT NULL REFERENCES bookings (id),
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (booking_id, user_id)
);
CREATE INDEX booking_participants_user ON booking_participants (user_id);

CREATE TABLE rooms (
    id TEXT PRIMARY KEY NOT NULL,
    last_seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE messages (
    id TEXT PRIMARY KEY NOT NULL,
    room TEXT NOT NULL REFERENCES rooms (id),
    seq BIGINT NOT NULL,
    sender_id TEXT,
    sender_name TEXT NOT NULL,
    sender_role TEXT NOT NULL,
    client_id TEXT,
    body TEXT NOT NULL,
    sent_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX messages_room_seq ON messages (room, seq);
CREATE UNIQUE INDEX messages_dedup ON messages (room, sender_id, client_id);
CREATE INDEX messages_sender ON messages (sender_id);

CREATE TABLE read_cursors (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (room, user_id)
);

-- Every status a booking went through, with what caused it. Kept for the
-- legal retention period (7 years): erasure of a user never touches it.
CREATE TABLE booking_status_history (
    id TEXT PRIMARY KEY NOT NULL,
    booking_id TEXT NOT NULL REFERENCES bookings (id),
    status TEXT NOT NULL,
    previous_status TEXT,
    reason TEXT,
    caused_by TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX booking_status_history_booking ON booking_status_history (booking_id, at);

-- In-app notifications (the inbox). `source` makes creation idempotent:
-- one notification per user and cause (e.g. a booking status change).
CREATE TABLE notifications (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    link TEXT,
    source TEXT,
    created_at BIGINT NOT NULL,
    read_at BIGINT
);
CREATE INDEX notifications_user ON notifications (user_id, created_at);
CREATE UNIQUE INDEX notifications_source ON notifications (user_id, source);

-- Stripe events already applied (each event id once).
CREATE TABLE stripe_events (
    id TEXT PRIMARY KEY NOT NULL,
    event_type TEXT NOT NULL,
    booking_id TEXT,
    outcome TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
