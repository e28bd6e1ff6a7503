-- Per-tenant daily token quotas (docs/quotas.md). A tenant without a row is unlimited.
CREATE TABLE token_quotas (
    tenant_id TEXT PRIMARY KEY,
    tokens_per_day INTEGER NOT NULL CHECK (tokens_per_day > 0),
    update_time_us INTEGER NOT NULL
);

-- A tenant's usage on one UTC day (day = days since 1970-01-01): tokens settled by finished
-- turns, and tokens held by the reservations of turns still running.
CREATE TABLE token_usage (
    tenant_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    used_tokens INTEGER NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
    reserved_tokens INTEGER NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    PRIMARY KEY (tenant_id, day)
);

-- Reservations not yet settled; one whose turn crashed is swept when its lease expires.
CREATE TABLE token_reservations (
    reservation_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    day INTEGER NOT NULL,
    tokens INTEGER NOT NULL CHECK (tokens >= 0),
    expire_time_us INTEGER NOT NULL
);
CREATE INDEX token_reservations_expiry ON token_reservations (tenant_id, expire_time_us);
