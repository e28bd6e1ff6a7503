-- Encryption at rest with crypto-shredding (docs/security.md "Encryption at rest"): one data
-- key per user, stored only wrapped by the key-encryption key named kek_id. Deleting the row
-- destroys the key, and with it every sealed copy of the user's text (rows, log records,
-- backups). key_id is written into every value the key seals.
CREATE TABLE user_data_keys (
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    create_time_us INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
