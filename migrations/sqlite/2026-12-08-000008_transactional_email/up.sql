-- A transactional notification (a booking confirmed or paid) is emailed at
-- once and alone, whether or not it was read in the app.
ALTER TABLE notifications ADD COLUMN transactional BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE email_items ADD COLUMN transactional BOOLEAN NOT NULL DEFAULT FALSE;
