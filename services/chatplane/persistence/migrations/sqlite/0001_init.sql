-- The first schema of the embedded system of record. Times are microseconds since the Unix
-- epoch (UTC); every domain row carries tenant_id so that any query can be scoped by it.

CREATE TABLE conversations (
    conversation_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    title TEXT NOT NULL,
    create_time_us INTEGER NOT NULL,
    update_time_us INTEGER NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0 CHECK (message_count >= 0)
);

-- ListConversations: one user's conversations, newest update first, keyset-paged.
CREATE INDEX conversations_by_owner_recency
    ON conversations (tenant_id, user_id, update_time_us DESC, conversation_id DESC);

-- Tombstones: a deleted conversation's id stays here so that messages recorded for it
-- later (log re-delivery, a turn finishing after the delete) never bring it back.
CREATE TABLE deleted_conversations (
    conversation_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    delete_time_us INTEGER NOT NULL
);

CREATE TABLE messages (
    -- Insertion order: the tie-breaker between messages created at the same time.
    position INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('complete', 'interrupted')),
    model TEXT NOT NULL,
    create_time_us INTEGER NOT NULL,
    reply_to_message_id TEXT NOT NULL,
    finish_reason TEXT NOT NULL
        CHECK (finish_reason IN ('unspecified', 'stop', 'max_tokens', 'interrupted', 'error')),
    input_tokens INTEGER NOT NULL CHECK (input_tokens >= 0),
    output_tokens INTEGER NOT NULL CHECK (output_tokens >= 0),
    client_message_id TEXT NOT NULL,
    store_time_us INTEGER NOT NULL
);

-- GetConversation: one conversation's messages, oldest first, keyset-paged. Leading with
-- conversation_id also serves the ON DELETE CASCADE from conversations.
CREATE INDEX messages_by_conversation_time
    ON messages (conversation_id, create_time_us, position);

-- One row per BeginTurn: the reserved ids, the idempotency key and the owner's lease.
CREATE TABLE turns (
    user_message_id TEXT PRIMARY KEY,
    assistant_message_id TEXT NOT NULL UNIQUE,
    conversation_id TEXT NOT NULL REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- NULL when the caller sent no idempotency key.
    client_message_id TEXT,
    lease_expire_time_us INTEGER NOT NULL,
    create_time_us INTEGER NOT NULL
);

CREATE UNIQUE INDEX turns_by_idempotency_key
    ON turns (tenant_id, user_id, client_message_id) WHERE client_message_id IS NOT NULL;

CREATE INDEX turns_by_conversation ON turns (conversation_id);

CREATE TABLE feedback (
    message_id TEXT NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('thumbs_up', 'thumbs_down')),
    comment TEXT NOT NULL,
    create_time_us INTEGER NOT NULL,
    PRIMARY KEY (message_id, tenant_id, user_id)
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    label TEXT NOT NULL,
    -- Only the hash of the secret part is stored; the full key is shown once, at creation.
    secret_sha256 BLOB NOT NULL CHECK (length(secret_sha256) = 32),
    revoked INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    create_time_us INTEGER NOT NULL
);

CREATE INDEX api_keys_by_owner ON api_keys (tenant_id, user_id);
