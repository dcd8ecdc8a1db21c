-- BENCHMARKS.md, item 27: what inserting a 100,000-device job's executions
-- costs, with the schema as it was before (a foreign key on job_id, a
-- unique index on (job_id, device_id)) and as it is, ranked for several
-- batches and unranked for one. Run on a scratch database that
-- `rollway migrate` has set up, on the benchmarks' cluster:
--   createdb -h 127.0.0.1 -p 55433 -U postgres scratch
--   DATABASE_URL=postgres://postgres@127.0.0.1:55433/scratch rollway migrate
--   psql -h 127.0.0.1 -p 55433 -U postgres -d scratch -f bench/sql/execution-insert.sql
-- Each variant runs in a transaction that is rolled back, after a VACUUM
-- of what the previous one left; read its "Execution Time" and, for the
-- first, the foreign key's "Trigger" line.
\set QUIET on
SET jit = off;
INSERT INTO devices (id, family, model, tags)
SELECT 'BENCH-' || lpad(i::text, 7, '0'), 'esp32', 'esp32s3', jsonb_build_object('fleet', 'bench')
FROM generate_series(0, 99999) i;
VACUUM ANALYZE devices;
INSERT INTO firmware (id, family, version, sha256, size, storage_key, created_by)
VALUES ('00000000-0000-0000-0000-000000000001', 'esp32', '1', repeat('a', 64), 1, 'k', 'bench');
INSERT INTO jobs (id, firmware_id, kind, start_at, status, targets, rollout_plugin,
                  device_timeout_secs, max_retries, created_by)
VALUES ('00000000-0000-0000-0000-0000000000aa', '00000000-0000-0000-0000-000000000001',
        'immediate', now(), 'scheduled', '{}', 'rollout-percent', 60, 0, 'bench');

-- As `jobs::create` inserts for a plan of four batches, `collation` naming
-- how the digests are ranked.
PREPARE ranked AS
INSERT INTO executions (job_id, device_id, batch_group)
SELECT '00000000-0000-0000-0000-0000000000aa', t.id,
       least(width_bucket(t.rn - 1, '{1000,10000,50000,100000}'::bigint[]), 3)
FROM (SELECT d.id, row_number() OVER (ORDER BY md5('00000000-0000-0000-0000-0000000000aa' || d.id) COLLATE "C", d.id) AS rn
      FROM devices d WHERE d.family = 'esp32' AND d.tags @> '{"fleet":"bench"}') t
ORDER BY t.id;
PREPARE ranked_default_collation AS
INSERT INTO executions (job_id, device_id, batch_group)
SELECT '00000000-0000-0000-0000-0000000000aa', t.id,
       least(width_bucket(t.rn - 1, '{1000,10000,50000,100000}'::bigint[]), 3)
FROM (SELECT d.id, row_number() OVER (ORDER BY md5('00000000-0000-0000-0000-0000000000aa' || d.id), d.id) AS rn
      FROM devices d WHERE d.family = 'esp32' AND d.tags @> '{"fleet":"bench"}') t
ORDER BY t.id;
-- As it inserts for a plan of one batch.
PREPARE unranked AS
INSERT INTO executions (job_id, device_id, batch_group)
SELECT '00000000-0000-0000-0000-0000000000aa', d.id, 0
FROM devices d WHERE d.family = 'esp32' AND d.tags @> '{"fleet":"bench"}' ORDER BY d.id;
\set QUIET off

\echo '== before item 27: foreign key and unique index, digests in the default collation'
BEGIN;
ALTER TABLE executions ADD FOREIGN KEY (job_id) REFERENCES jobs (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX ON executions (job_id, device_id);
EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, COSTS OFF) EXECUTE ranked_default_collation;
ROLLBACK;
VACUUM executions;

\echo '== without the foreign key'
BEGIN;
CREATE UNIQUE INDEX ON executions (job_id, device_id);
EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, COSTS OFF) EXECUTE ranked_default_collation;
ROLLBACK;
VACUUM executions;

\echo '== without either'
BEGIN;
EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, COSTS OFF) EXECUTE ranked_default_collation;
ROLLBACK;
VACUUM executions;

\echo '== now: without either, digests ranked bytewise'
BEGIN;
EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, COSTS OFF) EXECUTE ranked;
ROLLBACK;
VACUUM executions;

\echo '== now, a plan of one batch'
BEGIN;
EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON, COSTS OFF) EXECUTE unranked;
ROLLBACK;
VACUUM executions;

\set QUIET on
DEALLOCATE ranked;
DEALLOCATE ranked_default_collation;
DEALLOCATE unranked;
DELETE FROM jobs;
DELETE FROM firmware;
DELETE FROM devices;
