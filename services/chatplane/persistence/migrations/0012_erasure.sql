-- Erasure and retention (docs/privacy.md "Erasure" and "Retention").

-- One row per erasure of a user (EraseUser): who asked, the user's conversations when it
-- began (ids only, for the steps that find data by conversation) and when it finished (NULL
-- while a step is left: the job is resumed at start and on a repeated call). The row is the
-- proof of the erasure; it holds no content.
CREATE TABLE erasure_jobs (
    job_id text COLLATE "C" PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL,
    actor text NOT NULL,
    source text NOT NULL,
    request_id text NOT NULL,
    -- Conversation ids separated by one space.
    conversation_ids text NOT NULL,
    create_time timestamptz NOT NULL,
    finish_time timestamptz
);

-- At most one unfinished job per user: a repeated call resumes it.
CREATE UNIQUE INDEX erasure_jobs_unfinished ON erasure_jobs (tenant_id, user_id)
    WHERE finish_time IS NULL;

-- The steps of a job in order; `removed` is a JSON object {"<what>": count} once done.
CREATE TABLE erasure_steps (
    job_id text COLLATE "C" NOT NULL REFERENCES erasure_jobs (job_id) ON DELETE CASCADE,
    position integer NOT NULL CHECK (position >= 0),
    step text NOT NULL,
    removed text NOT NULL DEFAULT '{}',
    finish_time timestamptz,
    PRIMARY KEY (job_id, position)
);

-- A tenant's retention period; a tenant without a row keeps its data forever.
CREATE TABLE retention_policies (
    tenant_id text PRIMARY KEY,
    days integer NOT NULL CHECK (days > 0),
    update_time timestamptz NOT NULL
);

-- Conversations the retention sweep deleted from the rows whose memory turns and log records
-- are still to be removed (kept until then, so a crash in between is caught up).
CREATE TABLE retention_pending (
    conversation_id text COLLATE "C" PRIMARY KEY,
    tenant_id text NOT NULL,
    user_id text NOT NULL
);

-- The retention sweep: a tenant's conversations by last activity.
CREATE INDEX conversations_by_tenant_update ON conversations (tenant_id, update_time);
