-- `waiting`: the device holds the downloaded, verified image until it may
-- install (a job whose install policy is `when-safe`: flashed when the
-- vehicle is parked with its engine off), for the reason it gives. It is
-- in flight, between `downloading` and `flashing`; the progress timeout
-- does not run for it (a truck may stay on the road for a shift).
ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check CHECK (status IN (
    'queued', 'dispatched', 'init', 'downloading', 'waiting', 'flashing', 'rebooting',
    'done', 'error', 'timed_out', 'expired', 'cancelled'));

-- Why a waiting device waits (NULL unless it waits).
ALTER TABLE executions ADD COLUMN waiting_reason TEXT;

-- The generated `stage` counts `waiting` in flight. PostgreSQL 15 cannot
-- change a generated expression in place: the column and the three
-- indexes that name it are made again (this rewrites `executions` under
-- an exclusive lock; stop every replica first, as for any migration).
ALTER TABLE executions DROP COLUMN stage;
ALTER TABLE executions
    ADD COLUMN stage TEXT NOT NULL GENERATED ALWAYS AS (
        CASE
            WHEN status = 'queued' THEN 'queued'
            WHEN status IN ('dispatched', 'init', 'downloading', 'waiting', 'flashing', 'rebooting')
                THEN 'in_flight'
            ELSE 'finished'
        END) STORED;
CREATE UNIQUE INDEX executions_in_flight_idx ON executions (device_id) WHERE stage = 'in_flight';
CREATE INDEX executions_queued_idx ON executions (job_id, batch_group, id) WHERE stage = 'queued';
CREATE INDEX executions_in_flight_since_idx ON executions (dispatched_at) WHERE stage = 'in_flight';
