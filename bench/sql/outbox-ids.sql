-- BENCHMARKS.md, item 16: WAL written by outbox-like inserts with random
-- (v4) against time-ordered (v7) primary keys. Run on a scratch database
-- of the benchmarks' cluster after the migrations' rollway_uuid_v7():
--   psql "$URL" -f migrations/20261202000003_time_ordered_event_ids.sql
--   psql "$URL" -f bench/sql/outbox-ids.sql
-- Each table starts with 400,000 rows; then 100,000 rows are inserted in
-- 200 statements of 500, each committed, right after a CHECKPOINT.
CREATE TABLE random_ids (id uuid PRIMARY KEY, aggregate_id text, payload jsonb, occurred_at timestamptz DEFAULT now());
CREATE TABLE v7_ids (LIKE random_ids INCLUDING ALL);
INSERT INTO random_ids (id, aggregate_id, payload) SELECT gen_random_uuid(), 'd' || g, jsonb_build_object('n', g) FROM generate_series(1, 400000) g;
INSERT INTO v7_ids (id, aggregate_id, payload) SELECT rollway_uuid_v7(), 'd' || g, jsonb_build_object('n', g) FROM generate_series(1, 400000) g;

CHECKPOINT;
SELECT pg_current_wal_lsn() AS before \gset
DO $$ BEGIN FOR i IN 1..200 LOOP
    INSERT INTO random_ids (id, aggregate_id, payload) SELECT gen_random_uuid(), 'd' || g, jsonb_build_object('n', g) FROM generate_series(1, 500) g;
    COMMIT;
END LOOP; END $$;
SELECT 'random ids' AS ids, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), :'before')) AS wal,
       pg_size_pretty(pg_relation_size('random_ids_pkey')) AS index;

CHECKPOINT;
SELECT pg_current_wal_lsn() AS before \gset
DO $$ BEGIN FOR i IN 1..200 LOOP
    INSERT INTO v7_ids (id, aggregate_id, payload) SELECT rollway_uuid_v7(), 'd' || g, jsonb_build_object('n', g) FROM generate_series(1, 500) g;
    COMMIT;
END LOOP; END $$;
SELECT 'v7 ids' AS ids, pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), :'before')) AS wal,
       pg_size_pretty(pg_relation_size('v7_ids_pkey')) AS index;
