-- Human handoff (docs/handoff.md): who answers in a conversation, and operator replies.

-- One row per conversation that was ever handed to a human; a conversation without one is in
-- bot mode. Times are microseconds since the Unix epoch (UTC).
CREATE TABLE handoffs (
    conversation_id TEXT PRIMARY KEY
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('bot', 'human')),
    -- What made the last change.
    trigger TEXT NOT NULL
        CHECK (trigger IN ('user', 'explicit_request', 'thumbs_down', 'operator')),
    reason TEXT NOT NULL,
    request_time_us INTEGER NOT NULL,
    -- NULL while it was never given back to the bot.
    release_time_us INTEGER,
    released_by TEXT NOT NULL DEFAULT '',
    -- Names of the rules that have fired here (each fires once), separated by one space.
    rules_fired TEXT NOT NULL DEFAULT ''
);

-- An operator's list: a tenant's conversations in human mode, longest waiting first.
CREATE INDEX handoffs_waiting ON handoffs (tenant_id, request_time_us, conversation_id)
    WHERE mode = 'human';

-- An operator's reply is stored with role 'assistant' (the conversation's other side: the
-- first schema's CHECK allows only user and assistant, and SQLite cannot widen a CHECK without
-- rebuilding the table) and the operator's user id here; empty for everything else.
ALTER TABLE messages ADD COLUMN operator_id TEXT NOT NULL DEFAULT '';
