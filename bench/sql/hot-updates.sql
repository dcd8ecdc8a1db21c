-- BENCHMARKS.md, item 18: updates of a table shaped like `executions`
-- (its in-flight indexes, 100,000 rows, fillfactor 80) moving every row
-- through init, downloading, flashing, rebooting in statements of 500,
-- each committed, after a CHECKPOINT: table `a` changes `status` (which
-- the indexes name, so no update is HOT), table `b` keeps `status` and
-- writes the sub-state to `phase`, which no index names; table `c` is the
-- schema since migration 20261202000004 (item 19): it changes `status`,
-- which no index names any more, and its indexes name the generated
-- `stage`, the same for every in-flight status. On a scratch database of
-- the benchmarks' cluster: psql "$URL" -f bench/sql/hot-updates.sql
CREATE TABLE a (id bigserial PRIMARY KEY, job_id uuid, device_id text, batch_group int, status text, phase text, progress int2, version bigint DEFAULT 0, dispatched_at timestamptz, updated_at timestamptz) WITH (fillfactor = 80);
CREATE UNIQUE INDEX ON a (device_id) WHERE status IN ('dispatched','init','downloading','flashing','rebooting');
CREATE INDEX ON a (job_id, batch_group, status);
CREATE INDEX ON a (device_id, id);
CREATE INDEX ON a (dispatched_at) WHERE status IN ('dispatched','init','downloading','flashing','rebooting');
CREATE TABLE b (LIKE a INCLUDING ALL) WITH (fillfactor = 80);
CREATE TABLE c (id bigserial PRIMARY KEY, job_id uuid, device_id text, batch_group int, status text, phase text, progress int2, version bigint DEFAULT 0, dispatched_at timestamptz, updated_at timestamptz,
  stage text GENERATED ALWAYS AS (CASE WHEN status = 'queued' THEN 'queued' WHEN status IN ('dispatched','init','downloading','flashing','rebooting') THEN 'in_flight' ELSE 'finished' END) STORED) WITH (fillfactor = 80);
CREATE UNIQUE INDEX ON c (device_id) WHERE stage = 'in_flight';
CREATE INDEX ON c (job_id, batch_group);
CREATE INDEX ON c (device_id, id);
CREATE INDEX ON c (dispatched_at) WHERE stage = 'in_flight';
INSERT INTO a (job_id, device_id, batch_group, status, dispatched_at) SELECT '00000000-0000-0000-0000-000000000001', 'D'||md5(g::text), 0, 'dispatched', now() FROM generate_series(1,100000) g;
INSERT INTO b SELECT * FROM a;
INSERT INTO c (job_id, device_id, batch_group, status, dispatched_at) SELECT job_id, device_id, batch_group, status, dispatched_at FROM a;
VACUUM ANALYZE a; VACUUM ANALYZE b; VACUUM ANALYZE c;
CHECKPOINT;
SELECT pg_current_wal_lsn() AS l \gset
\timing on
-- status moves through the in-flight states: every update non-HOT
DO $$ DECLARE s text; BEGIN FOREACH s IN ARRAY ARRAY['init','downloading','flashing','rebooting'] LOOP FOR i IN 0..199 LOOP UPDATE a SET status = s, version = version + 1, updated_at = now() WHERE id > i*500 AND id <= (i+1)*500; COMMIT; END LOOP; END LOOP; END $$;
\timing off
SELECT 'status', pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), :'l')), n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'a';
CHECKPOINT;
SELECT pg_current_wal_lsn() AS l \gset
\timing on
-- status stays 'dispatched'; the sub-state is in a column no index names
DO $$ DECLARE s text; BEGIN FOREACH s IN ARRAY ARRAY['init','downloading','flashing','rebooting'] LOOP FOR i IN 0..199 LOOP UPDATE b SET phase = s, version = version + 1, updated_at = now() WHERE id > i*500 AND id <= (i+1)*500; COMMIT; END LOOP; END LOOP; END $$;
\timing off
SELECT 'phase', pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), :'l')), n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'b';
CHECKPOINT;
SELECT pg_current_wal_lsn() AS l \gset
\timing on
-- status moves through the in-flight states; the indexes name `stage` only
DO $$ DECLARE s text; BEGIN FOREACH s IN ARRAY ARRAY['init','downloading','flashing','rebooting'] LOOP FOR i IN 0..199 LOOP UPDATE c SET status = s, version = version + 1, updated_at = now() WHERE id > i*500 AND id <= (i+1)*500; COMMIT; END LOOP; END LOOP; END $$;
\timing off
SELECT 'stage', pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), :'l')), n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'c';
