-- The variant registry (docs/registry.md): immutable versions of answer configurations, and
-- the deployment's change history, whose last row is what serves traffic now.

-- One row per pushed version; never updated or deleted.
CREATE TABLE variant_versions (
    name TEXT COLLATE "C" NOT NULL,
    version INTEGER NOT NULL CHECK (version > 0),
    -- The canonical JSON of the configuration, and its SHA-256 (hex).
    spec_json TEXT NOT NULL,
    spec_sha256 TEXT NOT NULL,
    created_by TEXT NOT NULL,
    create_time TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);

-- One row per promotion or rollback: who, when, from, to, and the deployment after it
-- (production and canary as NAME@VERSION, '' for none).
CREATE TABLE variant_changes (
    revision BIGINT PRIMARY KEY CHECK (revision > 0),
    change_time TIMESTAMPTZ NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
    stage TEXT NOT NULL CHECK (stage IN ('canary', 'production')),
    from_variant TEXT NOT NULL,
    to_variant TEXT NOT NULL,
    from_share_percent DOUBLE PRECISION NOT NULL,
    to_share_percent DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    production_after TEXT NOT NULL,
    canary_after TEXT NOT NULL,
    canary_share_after DOUBLE PRECISION NOT NULL
);
