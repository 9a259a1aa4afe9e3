DROP TABLE message_reactions;
ALTER TABLE messages DROP COLUMN reactions;
ALTER TABLE messages DROP COLUMN deleted_at;
ALTER TABLE messages DROP COLUMN edited_at;
ALTER TABLE messages DROP COLUMN attachments;
ALTER TABLE messages DROP COLUMN target_seq;
ALTER TABLE messages DROP COLUMN kind;
