-- The update pipeline: signing keys, released batches, rollout evaluation.

-- ed25519 keys that sign update manifests. Several may be published (key
-- rotation); the newest active one signs.
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    public_key  BYTEA NOT NULL CHECK (length(public_key) = 32),
    private_key BYTEA NOT NULL CHECK (length(private_key) = 32),
    active      BOOLEAN NOT NULL DEFAULT true,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The batch groups a rollout planned, and when each was released.
CREATE TABLE job_batches (
    job_id      UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    batch_group INTEGER NOT NULL,
    size        INTEGER NOT NULL CHECK (size > 0),
    started_at  TIMESTAMPTZ,
    PRIMARY KEY (job_id, batch_group)
);

-- When the rollout engine looks at a running job next.
ALTER TABLE jobs ADD COLUMN next_evaluation_at TIMESTAMPTZ;
CREATE INDEX jobs_evaluation_idx ON jobs (next_evaluation_at) WHERE status = 'running';

-- The dispatcher's and the timeout sweeper's hot paths.
CREATE INDEX executions_queued_idx ON executions (job_id, batch_group, id) WHERE status = 'queued';
CREATE INDEX executions_in_flight_since_idx ON executions (dispatched_at)
    WHERE status IN ('dispatched', 'init', 'downloading', 'flashing', 'rebooting');
