DROP TABLE support_token_usage;
DROP TABLE support_conversations;
