-- A/B variants (docs/variants.md). One row per stored assistant message: the variant that
-- answered and how fast (from the turn's start at the Agent; NULL when not measured). A
-- table of its own, written with the message in the same transaction, so the message
-- columns stay as they are.
CREATE TABLE answer_metrics (
    message_id text COLLATE "C" PRIMARY KEY REFERENCES messages (message_id) ON DELETE CASCADE,
    tenant_id text NOT NULL,
    variant text COLLATE "C" NOT NULL CHECK (variant <> ''),
    -- Copied from the message (never changed after it is stored), so that the report reads
    -- this table and feedback only.
    status text NOT NULL CHECK (status IN ('complete', 'interrupted')),
    input_tokens integer NOT NULL CHECK (input_tokens >= 0),
    output_tokens integer NOT NULL CHECK (output_tokens >= 0),
    first_token_ms bigint CHECK (first_token_ms >= 0),
    duration_ms bigint CHECK (duration_ms >= 0),
    create_time timestamptz NOT NULL
);

-- ReportVariants: one tenant's answers since a time, or every tenant's.
CREATE INDEX answer_metrics_by_tenant_time ON answer_metrics (tenant_id, create_time);
CREATE INDEX answer_metrics_by_time ON answer_metrics (create_time);

-- Answers stored before variants existed were given with the settings alone: 'default'.
INSERT INTO answer_metrics
    (message_id, tenant_id, variant, status, input_tokens, output_tokens, create_time)
    SELECT message_id, tenant_id, 'default', status, input_tokens, output_tokens, create_time
    FROM messages
    WHERE role = 'assistant';

-- An optional numeric rating (1-5) next to the thumbs.
ALTER TABLE feedback ADD COLUMN score integer CHECK (score BETWEEN 1 AND 5);
