DROP TABLE push_vapid_keys;
DROP TABLE push_queue;
DROP TABLE push_preferences;
DROP TABLE push_subscriptions;
