-- Edits, deletions and reactions are entries of the room's sequence of
-- their own (`kind`), each naming the message it changes (`target_seq`);
-- a message that answers another names it in `target_seq` too.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE messages ADD COLUMN target_seq BIGINT;
-- A message's attachment references: a JSON array, or NULL for none.
ALTER TABLE messages ADD COLUMN attachments TEXT;
-- The message as it stands: when its text last changed, when it was
-- deleted (its body and attachments are blanked then), and how many
-- reactions it carries (0 spares reading `message_reactions`).
ALTER TABLE messages ADD COLUMN edited_at BIGINT;
ALTER TABLE messages ADD COLUMN deleted_at BIGINT;
ALTER TABLE messages ADD COLUMN reactions BIGINT NOT NULL DEFAULT 0;

-- One row per (message, user, emoji) that is on.
CREATE TABLE message_reactions (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    emoji TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (room, seq, user_id, emoji)
);
CREATE INDEX message_reactions_user ON message_reactions (user_id);
