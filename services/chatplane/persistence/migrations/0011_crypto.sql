-- Encryption at rest with crypto-shredding (docs/security.md "Encryption at rest"): one data
-- key per user, stored only wrapped by the key-encryption key named kek_id. Deleting the row
-- destroys the key, and with it every sealed copy of the user's text (rows, log records,
-- backups). key_id is written into every value the key seals.
CREATE TABLE user_data_keys (
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    key_id text NOT NULL,
    kek_id text NOT NULL,
    wrapped_key bytea NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
