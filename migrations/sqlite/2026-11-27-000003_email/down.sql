DROP INDEX notifications_created_at;
DROP INDEX messages_sent_at;
DROP TABLE email_batches;
DROP TABLE email_outbox;
DROP TABLE email_items;
DROP TABLE email_preferences;
