ALTER TABLE email_items DROP COLUMN transactional;
ALTER TABLE notifications DROP COLUMN transactional;
