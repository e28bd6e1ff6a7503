-- The first schema of the PostgreSQL system of record: the same tables, keys and constraints
-- as the SQLite schema, in PostgreSQL types. Every domain row carries tenant_id, so any query
-- can be scoped by it. Ids are text in the "C" collation: ordered byte by byte, as Python
-- orders them, so keyset cursors mean the same in both engines (and comparisons skip the
-- locale). Times are timestamptz (microseconds, UTC).

CREATE TABLE conversations (
    conversation_id text COLLATE "C" PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    title text NOT NULL,
    create_time timestamptz NOT NULL,
    update_time timestamptz NOT NULL,
    message_count bigint NOT NULL DEFAULT 0 CHECK (message_count >= 0)
);

-- ListConversations: one user's conversations, newest update first, keyset-paged.
CREATE INDEX conversations_by_owner_recency
    ON conversations (tenant_id, user_id, update_time DESC, conversation_id DESC);

-- Tombstones: a deleted conversation's id stays here so that messages recorded for it
-- later (log re-delivery, a turn finishing after the delete) never bring it back.
CREATE TABLE deleted_conversations (
    conversation_id text COLLATE "C" PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    delete_time timestamptz NOT NULL
);

CREATE TABLE messages (
    message_id text COLLATE "C" PRIMARY KEY,
    -- Insertion order: the tie-breaker between messages created at the same time.
    position bigint GENERATED ALWAYS AS IDENTITY,
    conversation_id text COLLATE "C" NOT NULL
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    role text NOT NULL CHECK (role IN ('user', 'assistant')),
    text text NOT NULL,
    status text NOT NULL CHECK (status IN ('complete', 'interrupted')),
    model text NOT NULL,
    create_time timestamptz NOT NULL,
    reply_to_message_id text NOT NULL,
    finish_reason text NOT NULL
        CHECK (finish_reason IN ('unspecified', 'stop', 'max_tokens', 'interrupted', 'error')),
    input_tokens integer NOT NULL CHECK (input_tokens >= 0),
    output_tokens integer NOT NULL CHECK (output_tokens >= 0),
    client_message_id text NOT NULL,
    store_time timestamptz NOT NULL
);

-- GetConversation: one conversation's messages, oldest first, keyset-paged. Leading with
-- conversation_id also serves the ON DELETE CASCADE from conversations.
CREATE INDEX messages_by_conversation_time
    ON messages (conversation_id, create_time, position);

-- One row per BeginTurn: the reserved ids, the idempotency key and the owner's lease.
CREATE TABLE turns (
    user_message_id text COLLATE "C" PRIMARY KEY,
    assistant_message_id text COLLATE "C" NOT NULL UNIQUE,
    conversation_id text COLLATE "C" NOT NULL
        REFERENCES conversations (conversation_id) ON DELETE CASCADE,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    -- NULL when the caller sent no idempotency key.
    client_message_id text,
    lease_expire_time timestamptz NOT NULL,
    create_time timestamptz NOT NULL
);

-- The arbiter of concurrent BeginTurns with one key: INSERT ... ON CONFLICT on this index.
CREATE UNIQUE INDEX turns_by_idempotency_key
    ON turns (tenant_id, user_id, client_message_id) WHERE client_message_id IS NOT NULL;

CREATE INDEX turns_by_conversation ON turns (conversation_id);

CREATE TABLE feedback (
    message_id text COLLATE "C" NOT NULL REFERENCES messages (message_id) ON DELETE CASCADE,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    rating text NOT NULL CHECK (rating IN ('thumbs_up', 'thumbs_down')),
    comment text NOT NULL,
    create_time timestamptz NOT NULL,
    PRIMARY KEY (message_id, tenant_id, user_id)
);

CREATE TABLE api_keys (
    key_id text COLLATE "C" PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    label text NOT NULL,
    -- Only the hash of the secret part is stored; the full key is shown once, at creation.
    secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
    revoked boolean NOT NULL DEFAULT false,
    create_time timestamptz NOT NULL
);

CREATE INDEX api_keys_by_owner ON api_keys (tenant_id, user_id);
