-- Status ingestion moves every execution through init, downloading,
-- flashing and rebooting. Each of those updates changed `status`, which
-- every execution index but two named (as a key or in its predicate), so
-- PostgreSQL wrote each as a new tuple with an entry in every index, and
-- never as a heap-only (HOT) update. Measured on a table shaped like this
-- one (bench/sql/hot-updates.sql, BENCHMARKS.md item 19): 400,000 in-flight
-- updates took 17.6 s and 273 MB of WAL with 0 HOT updates, and 6.1 s and
-- 180 MB with 52 % HOT updates once no index named `status`.
--
-- The indexes now name `stage`, which only changes when an execution is
-- dispatched (queued → in_flight), finishes (→ finished) or goes back to
-- the queue, and is computed from `status` by the database itself, so no
-- writer can let the two disagree. Queries that want a partial index say
-- `stage = ...`: the planner matches a predicate only to the same words.
--
-- The table keeps a fifth of each page free for the new versions of its
-- rows (HOT updates stay on their page).
--
-- Upgrading: this rewrites `executions` and rebuilds its indexes under an
-- exclusive lock; stop every replica first, as for any migration.
ALTER TABLE executions
    SET (fillfactor = 80),
    ADD COLUMN stage TEXT NOT NULL GENERATED ALWAYS AS (
        CASE
            WHEN status = 'queued' THEN 'queued'
            WHEN status IN ('dispatched', 'init', 'downloading', 'flashing', 'rebooting') THEN 'in_flight'
            ELSE 'finished'
        END) STORED;

-- A device has at most one execution in flight at a time; status ingestion
-- finds it through this index.
DROP INDEX executions_in_flight_idx;
CREATE UNIQUE INDEX executions_in_flight_idx ON executions (device_id) WHERE stage = 'in_flight';

-- The rollout snapshot's and the batch planner's reads by job and batch;
-- they count statuses from the rows themselves.
DROP INDEX executions_job_batch_idx;
CREATE INDEX executions_job_batch_idx ON executions (job_id, batch_group);

-- The dispatcher's and the timeout sweeper's hot paths.
DROP INDEX executions_queued_idx;
CREATE INDEX executions_queued_idx ON executions (job_id, batch_group, id) WHERE stage = 'queued';
DROP INDEX executions_in_flight_since_idx;
CREATE INDEX executions_in_flight_since_idx ON executions (dispatched_at) WHERE stage = 'in_flight';

