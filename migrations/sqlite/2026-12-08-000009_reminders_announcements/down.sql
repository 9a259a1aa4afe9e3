ALTER TABLE email_batches DROP COLUMN bulk;
DROP INDEX email_outbox_announcement;
ALTER TABLE email_outbox DROP COLUMN announcement_id;
DROP TABLE announcements;
ALTER TABLE email_preferences DROP COLUMN reminder;
DROP TABLE booking_reminders;
