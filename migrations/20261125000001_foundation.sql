-- Rollway foundation schema: fleet, firmware, jobs, executions, outbox, auth, audit.
--
-- Statuses are TEXT with CHECK constraints rather than PostgreSQL enums so that
-- a later release can add a status in a transactional migration.

CREATE TABLE devices (
    id               TEXT PRIMARY KEY,
    family           TEXT NOT NULL,
    model            TEXT,
    -- A microcontroller behind a gateway (e.g. an STM32 on the CAN bus of a
    -- Jetson) is addressed through its gateway. Deferred so that a bulk
    -- registration may list a child before its gateway.
    gateway_id       TEXT REFERENCES devices (id) ON DELETE RESTRICT DEFERRABLE INITIALLY DEFERRED,
    tags             JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(tags) = 'object'),
    firmware_version TEXT,
    last_seen        TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (gateway_id IS NULL OR gateway_id <> id)
);
CREATE INDEX devices_family_idx ON devices (family, id);
CREATE INDEX devices_gateway_idx ON devices (gateway_id, id) WHERE gateway_id IS NOT NULL;
CREATE INDEX devices_tags_idx ON devices USING gin (tags jsonb_path_ops);
CREATE INDEX devices_firmware_version_idx ON devices (firmware_version, id);

CREATE TABLE firmware (
    id           UUID PRIMARY KEY,
    family       TEXT NOT NULL,
    version      TEXT NOT NULL,
    sha256       TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size         BIGINT NOT NULL CHECK (size >= 0),
    storage_key  TEXT NOT NULL,
    metadata     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (family, version)
);
CREATE INDEX firmware_sha256_idx ON firmware (sha256);

CREATE TABLE jobs (
    id                  UUID PRIMARY KEY,
    name                TEXT,
    firmware_id         UUID NOT NULL REFERENCES firmware (id) ON DELETE RESTRICT,
    kind                TEXT NOT NULL CHECK (kind IN ('immediate', 'scheduled', 'emergency')),
    start_at            TIMESTAMPTZ NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('scheduled', 'running', 'paused', 'completed', 'failed', 'cancelled')),
    status_reason       TEXT,
    targets             JSONB NOT NULL,
    rollout_plugin      TEXT NOT NULL,
    rollout_config      JSONB NOT NULL DEFAULT '{}'::jsonb,
    device_timeout_secs INTEGER NOT NULL CHECK (device_timeout_secs > 0),
    max_retries         INTEGER NOT NULL CHECK (max_retries >= 0),
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    version             BIGINT NOT NULL DEFAULT 0
);
-- The scheduler's hot path: due jobs, emergency first.
CREATE INDEX jobs_due_idx ON jobs ((kind = 'emergency') DESC, start_at) WHERE status = 'scheduled';
CREATE INDEX jobs_status_idx ON jobs (status, id);

CREATE TABLE executions (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id        UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    batch_group   INTEGER,
    status        TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'dispatched', 'init', 'downloading', 'flashing', 'rebooting', 'done', 'error', 'timed_out', 'cancelled')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    progress      SMALLINT CHECK (progress BETWEEN 0 AND 100),
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    dispatched_at TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    -- Optimistic locking: every update is `... WHERE id = $1 AND version = $2`
    -- and bumps it.
    version       BIGINT NOT NULL DEFAULT 0,
    UNIQUE (job_id, device_id)
);
-- A device has at most one execution in flight at a time; status ingestion
-- finds it through this index.
CREATE UNIQUE INDEX executions_in_flight_idx ON executions (device_id)
    WHERE status IN ('dispatched', 'init', 'downloading', 'flashing', 'rebooting');
CREATE INDEX executions_job_status_idx ON executions (job_id, status);
CREATE INDEX executions_job_batch_idx ON executions (job_id, batch_group, status);
CREATE INDEX executions_device_idx ON executions (device_id, id);

-- One row per state change of an execution (never one per progress chunk).
CREATE TABLE execution_status_log (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id BIGINT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    status       TEXT NOT NULL,
    progress     SMALLINT,
    message      TEXT,
    message_id   TEXT,
    at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX execution_status_log_execution_idx ON execution_status_log (execution_id, id);

-- Idempotency of consumers: a message id is applied once.
CREATE TABLE processed_messages (
    message_id   TEXT PRIMARY KEY,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX processed_messages_age_idx ON processed_messages (processed_at);

-- Transactional outbox: written in the same transaction as the change it
-- describes; relayed to Kafka afterwards.
CREATE TABLE event_outbox (
    id              UUID PRIMARY KEY,
    aggregate_type  TEXT NOT NULL,
    aggregate_id    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         JSONB NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at         TIMESTAMPTZ
);
CREATE INDEX event_outbox_pending_idx ON event_outbox (next_attempt_at, occurred_at) WHERE sent_at IS NULL;

CREATE TABLE event_dead_letter (
    id             UUID PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    payload        JSONB NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    attempts       INTEGER NOT NULL,
    last_error     TEXT NOT NULL,
    failed_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- SHA-256 of the secret; the secret itself is shown once and never stored.
    token_hash   BYTEA NOT NULL UNIQUE,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    details     JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, id);
