-- Key management (issue 7): when a rotated or revoked key stops working (NULL: no end), and
-- the key that replaced it by a rotation.
ALTER TABLE api_keys ADD COLUMN expire_time timestamptz;
ALTER TABLE api_keys ADD COLUMN replaced_by text NOT NULL DEFAULT '';
-- A tenant's keys, newest first (AdminService.ListApiKeys).
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, create_time DESC, key_id DESC);

-- The tamper-evident audit log: one row per record, each carrying the previous record's hash
-- (chatplane/audit/chain.py has the canonical form). Never message content. Times are whole
-- microseconds since the Unix epoch, exactly what is hashed.
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    event_time_us bigint NOT NULL,
    actor text NOT NULL,
    tenant_id text NOT NULL,
    action text NOT NULL,
    object text NOT NULL,
    outcome text NOT NULL,
    detail text NOT NULL,
    source text NOT NULL,
    request_id text NOT NULL,
    prev_hash bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash bytea NOT NULL CHECK (length(hash) = 32)
);
-- The chain's head (one row), locked FOR UPDATE by every append (so replicas keep one chain)
-- and updated with it: removing records from the end shows.
CREATE TABLE audit_head (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    hash bytea NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
