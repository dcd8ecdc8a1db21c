-- Upgrading: stop every replica of an earlier version before this runs.
-- Their device deletion relied on the cascades dropped here, their job
-- creation does not take the advisory lock, and their scheduler would plan
-- again a job this version planned at creation.

-- Creating a job over 1,000,000 devices spent 6 to 11 s in the per-row
-- foreign-key check of executions.device_id (one index probe and one row
-- lock on devices per execution). The rows come from a SELECT on devices
-- in the same transaction, so the check can never fail there; the one
-- race it guarded against, a device deleted while a job over it is being
-- created, is excluded by an advisory lock that job creation holds shared
-- and device deletion exclusive (`db::DEVICE_SET_LOCK`), and deleting a
-- device deletes its executions itself, as the cascade did.
ALTER TABLE executions DROP CONSTRAINT executions_device_id_fkey;

-- Likewise every status log row checked its execution (an index probe and
-- a row lock, 12% of a dispatch claim), though each is written by the
-- statement that has just updated that execution. Deleting a device
-- deletes the log rows of its executions with them.
ALTER TABLE execution_status_log DROP CONSTRAINT execution_status_log_execution_id_fkey;

-- (job_id, batch_group, status) serves every query that filtered on
-- (job_id, status); the second index cost an entry on every execution
-- insert and status change.
DROP INDEX executions_job_status_idx;
