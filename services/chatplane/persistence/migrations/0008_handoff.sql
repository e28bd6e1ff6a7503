-- Human handoff (docs/handoff.md): who answers in a conversation, and operator replies.

-- One row per conversation that was ever handed to a human; a conversation without one is in
-- bot mode.
CREATE TABLE handoffs (
    conversation_id text COLLATE "C" PRIMARY KEY
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('bot', 'human')),
    -- What made the last change.
    trigger text NOT NULL
        CHECK (trigger IN ('user', 'explicit_request', 'thumbs_down', 'operator')),
    reason text NOT NULL,
    request_time timestamptz NOT NULL,
    -- NULL while it was never given back to the bot.
    release_time timestamptz,
    released_by text NOT NULL DEFAULT '',
    -- Names of the rules that have fired here (each fires once), separated by one space.
    rules_fired text NOT NULL DEFAULT ''
);

-- An operator's list: a tenant's conversations in human mode, longest waiting first.
CREATE INDEX handoffs_waiting ON handoffs (tenant_id, request_time, conversation_id)
    WHERE mode = 'human';

-- An operator's reply is stored with role 'assistant' (the conversation's other side), as in
-- the SQLite schema, and the operator's user id here; empty for everything else.
ALTER TABLE messages ADD COLUMN operator_id text NOT NULL DEFAULT '';
