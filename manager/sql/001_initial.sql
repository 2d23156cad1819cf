-- The data model: project -> tenant -> application -> trigger -> trigger run,
-- plus the API's tenant members and machine tokens. Deleting a parent
-- deletes everything below it.

CREATE TABLE projects (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projects_name_key UNIQUE (name)
);

CREATE TABLE tenants (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_name_key UNIQUE (project_id, name)
);

CREATE TABLE applications (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    backend_url     text NOT NULL CHECK (length(backend_url) BETWEEN 1 AND 2048),
    signing_secret  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT applications_name_key UNIQUE (tenant_id, name)
);

CREATE TABLE triggers (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    application_id   uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    schedule         text NOT NULL CHECK (length(schedule) BETWEEN 1 AND 200),
    timezone         text NOT NULL DEFAULT 'UTC',
    enabled          boolean NOT NULL DEFAULT true,
    payload          jsonb NOT NULL DEFAULT '{}'::jsonb,
    path             text CHECK (path IS NULL OR path LIKE '/%'),
    timeout_seconds  double precision NOT NULL DEFAULT 30
                     CHECK (timeout_seconds > 0 AND timeout_seconds <= 3600),
    max_retries      integer NOT NULL DEFAULT 3
                     CHECK (max_retries BETWEEN 0 AND 100),
    misfire_policy   text NOT NULL DEFAULT 'fire_once'
                     CHECK (misfire_policy IN ('fire_once', 'skip', 'catch_up')),
    next_run_at      timestamptz,
    last_run_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT triggers_name_key UNIQUE (application_id, name)
);

-- The scheduler's claim reads only enabled triggers in next_run_at order, so
-- its cost follows the number of due triggers, not the table size.
CREATE INDEX triggers_due_idx ON triggers (next_run_at) WHERE enabled;

CREATE TABLE trigger_runs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    trigger_id        uuid NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    -- Copied from the trigger so queue metrics and per-application limits
    -- need no join on the dispatch path.
    application_id    uuid NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    scheduled_at      timestamptz NOT NULL,
    -- A run asked for through the API ("run now") is not a schedule slot.
    manual            boolean NOT NULL DEFAULT false,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded',
                                        'failed', 'skipped')),
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- A queued run is not dispatched before this instant (retry backoff).
    available_at      timestamptz NOT NULL DEFAULT now(),
    -- A running run whose lease has passed belongs to a dead executor.
    lease_expires_at  timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    http_status       integer,
    error             text,
    duration_ms       double precision,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- One schedule slot can never produce two runs, whatever leadership does.
CREATE UNIQUE INDEX trigger_runs_slot_key
    ON trigger_runs (trigger_id, scheduled_at) WHERE NOT manual;

-- Dispatch claims queued runs in the order they become available.
CREATE INDEX trigger_runs_queued_idx
    ON trigger_runs (available_at) WHERE status = 'queued';

-- Crash recovery looks for running runs whose lease has expired.
CREATE INDEX trigger_runs_running_idx
    ON trigger_runs (lease_expires_at) WHERE status = 'running';

-- Run history of one trigger, newest first.
CREATE INDEX trigger_runs_history_idx
    ON trigger_runs (trigger_id, scheduled_at DESC, id DESC);

-- Retention deletes finished runs oldest first.
CREATE INDEX trigger_runs_finished_idx
    ON trigger_runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE tenant_members (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- 'user' matches the token's subject, 'group' one of its groups.
    kind        text NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'group')),
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 300),
    role        text NOT NULL CHECK (role IN ('viewer', 'editor')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, kind, subject)
);

CREATE INDEX tenant_members_subject_idx ON tenant_members (subject);

CREATE TABLE api_tokens (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role          text NOT NULL CHECK (role IN ('viewer', 'editor')),
    -- Only a SHA-256 of the token is stored; the token is shown once.
    token_hash    bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CONSTRAINT api_tokens_hash_key UNIQUE (token_hash)
);
