ALTER TABLE email_items RESET (fillfactor);
DROP INDEX email_items_room;
DROP INDEX email_items_pending_range;
ALTER TABLE email_items DROP COLUMN up_to_seq;
