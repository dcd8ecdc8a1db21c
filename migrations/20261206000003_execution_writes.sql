-- Creating a job writes one execution per device, and claiming a command
-- rewrites it into every index of `executions` (the claim moves it out of
-- the `queued` index, so it is never a heap-only update). Two of those
-- writes guarded against what cannot happen (BENCHMARKS.md, item 27):
--
-- executions.job_id's foreign key checked every inserted row against
-- `jobs` (an index probe and a row lock each: about 250 ms of the 860 ms
-- that inserting 100,000 executions took, bench/sql/execution-insert.sql). Executions are inserted only by
-- `jobs::create`, by the statement that follows the insert of their job in
-- the same transaction, and jobs are never deleted.
--
-- The unique index on (job_id, device_id) took an entry on every insert and
-- every claim (65-85 ms of the same 860 ms). That statement selects each
-- device once (`devices.id` is the key, and the API refuses a device listed
-- twice); no query looks executions up by job and device.
ALTER TABLE executions DROP CONSTRAINT executions_job_id_fkey;
ALTER TABLE executions DROP CONSTRAINT executions_job_id_device_id_key;
