DROP TABLE idempotency_keys;
ALTER TABLE users DROP COLUMN sessions_revoked_at;
ALTER TABLE notifications DROP COLUMN data;
