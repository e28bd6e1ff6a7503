-- Key management (issue 7): when a rotated or revoked key stops working (NULL: no end), and
-- the key that replaced it by a rotation.
ALTER TABLE api_keys ADD COLUMN expire_time_us INTEGER;
ALTER TABLE api_keys ADD COLUMN replaced_by TEXT NOT NULL DEFAULT '';
-- A tenant's keys, newest first (AdminService.ListApiKeys).
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, create_time_us DESC, key_id DESC);

-- The tamper-evident audit log: one row per record, each carrying the previous record's hash
-- (chatplane/audit/chain.py has the canonical form). Never message content.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY CHECK (seq > 0),
    event_time_us INTEGER NOT NULL,
    actor TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    source TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash BLOB NOT NULL CHECK (length(hash) = 32)
);
-- The chain's head (one row), updated with every append: removing records from the end shows.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));
