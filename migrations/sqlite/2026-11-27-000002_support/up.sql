-- Support conversations with the AI agent. Their turns are the messages of
-- the room `support:<id>`; this row is the conversation's state for review.
CREATE TABLE support_conversations (
    id TEXT PRIMARY KEY NOT NULL,
    -- The user who opened it: the only non-admin who may read it.
    user_id TEXT NOT NULL,
    -- `ai` (the agent answers), `escalated` (admins were asked to step in;
    -- the agent still answers), `human` (an admin took over; the agent is silent).
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    escalated_at BIGINT,
    escalation_reason TEXT,
    taken_over_by TEXT,
    taken_over_at BIGINT,
    -- The seq of the last user message an agent claimed to answer, so each
    -- message is answered once even with several nodes watching.
    answered_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX support_conversations_user ON support_conversations (user_id);
CREATE INDEX support_conversations_status ON support_conversations (status, created_at);

-- Provider tokens used per user and UTC day (unix day number), for the daily budget.
CREATE TABLE support_token_usage (
    user_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    tokens BIGINT NOT NULL,
    PRIMARY KEY (user_id, day)
);
