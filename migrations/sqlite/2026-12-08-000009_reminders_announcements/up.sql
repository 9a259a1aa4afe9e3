-- Reminders before a booking's session, one row per lead time and start:
-- a moved booking gets rows for its new start (its pending old ones go),
-- so a reminder already sent for the old start is not sent again.
CREATE TABLE booking_reminders (
    id TEXT PRIMARY KEY NOT NULL,
    booking_id TEXT NOT NULL,
    lead_secs BIGINT NOT NULL,
    -- The session's start and when the reminder is due (unix ms).
    starts_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    -- pending, sent, missed (every node was down until the session
    -- began) or cancelled (the booking was no longer on when it came due).
    state TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX booking_reminders_slot ON booking_reminders (booking_id, lead_secs, starts_at);
CREATE INDEX booking_reminders_due ON booking_reminders (state, due_at);

ALTER TABLE email_preferences ADD COLUMN reminder BOOLEAN NOT NULL DEFAULT TRUE;

-- An announcement to every user (or every user of a role), worked through
-- in pages of users by id: `cursor` is the last user done, advanced in the
-- same transaction as the page's notifications and emails.
CREATE TABLE announcements (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    link TEXT,
    -- NULL: everyone.
    audience_role TEXT,
    -- Tells a repeated request from another one under the same id.
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    users BIGINT NOT NULL,
    notified BIGINT NOT NULL,
    email_queued BIGINT NOT NULL,
    cursor TEXT,
    claimed_by TEXT,
    claimed_until BIGINT,
    created_at BIGINT NOT NULL,
    -- When it was done, once done.
    updated_at BIGINT NOT NULL
);
CREATE INDEX announcements_state ON announcements (state);

-- Bulk emails (announcements) go after every other email, so a broadcast
-- to every user never holds up a chat email, a reminder or a confirmation.
-- An email with an announcement is a bulk one.
ALTER TABLE email_outbox ADD COLUMN announcement_id TEXT;
CREATE INDEX email_outbox_announcement ON email_outbox (announcement_id, state);
ALTER TABLE email_batches ADD COLUMN bulk BOOLEAN NOT NULL DEFAULT FALSE;
