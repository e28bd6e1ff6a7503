-- Per-tenant daily token quotas (docs/quotas.md). A tenant without a row is unlimited.
CREATE TABLE token_quotas (
    tenant_id text PRIMARY KEY,
    tokens_per_day bigint NOT NULL CHECK (tokens_per_day > 0),
    update_time timestamptz NOT NULL
);

-- A tenant's usage on one UTC day (day = days since 1970-01-01): tokens settled by finished
-- turns, and tokens held by the reservations of turns still running.
CREATE TABLE token_usage (
    tenant_id text NOT NULL,
    day integer NOT NULL,
    used_tokens bigint NOT NULL DEFAULT 0 CHECK (used_tokens >= 0),
    reserved_tokens bigint NOT NULL DEFAULT 0 CHECK (reserved_tokens >= 0),
    PRIMARY KEY (tenant_id, day)
);

-- Reservations not yet settled; one whose turn crashed is swept when its lease expires.
CREATE TABLE token_reservations (
    reservation_id text PRIMARY KEY,
    tenant_id text NOT NULL,
    day integer NOT NULL,
    tokens bigint NOT NULL CHECK (tokens >= 0),
    expire_time timestamptz NOT NULL
);
CREATE INDEX token_reservations_expiry ON token_reservations (tenant_id, expire_time);
