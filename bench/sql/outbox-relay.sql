-- BENCHMARKS.md, item 23: the relay's rounds on an outbox shaped as before
-- (partial indexes on unsent and sent rows, a BRIN index on sent_at) and as
-- now (no index names sent_at, fillfactor 50, the relay reading from its
-- floor). Run on a scratch database of the benchmarks' cluster:
--   psql "$URL" -f bench/sql/outbox-relay.sql
-- Each variant: 400 rounds, each committed, of 500 events inserted as
-- ingestion writes them, then one relay round: read the 500 oldest unsent,
-- mark them sent. The relay's share is printed apart.
\set QUIET on
CREATE TABLE outbox_before (
    id UUID PRIMARY KEY, aggregate_type TEXT NOT NULL, aggregate_id TEXT NOT NULL,
    event_type TEXT NOT NULL, payload JSONB NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(), attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT, next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(), sent_at TIMESTAMPTZ,
    seq BIGINT GENERATED ALWAYS AS IDENTITY);
CREATE INDEX ON outbox_before (seq) WHERE sent_at IS NULL;
CREATE INDEX ON outbox_before (seq) WHERE sent_at IS NOT NULL;
CREATE INDEX ON outbox_before USING brin (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE outbox_after (LIKE outbox_before INCLUDING DEFAULTS INCLUDING IDENTITY)
    WITH (fillfactor = 50);
ALTER TABLE outbox_after ADD PRIMARY KEY (id);
CREATE UNIQUE INDEX ON outbox_after (seq);
CREATE INDEX ON outbox_after (seq) WHERE attempts > 0;
CREATE INDEX ON outbox_after USING brin (occurred_at);

CREATE PROCEDURE relay_rounds(tbl TEXT, from_floor BOOLEAN) LANGUAGE plpgsql AS $$
DECLARE
    floor BIGINT := 0;
    ids UUID[];
    started TIMESTAMPTZ;
    relaying INTERVAL := '0';
BEGIN
    FOR i IN 1..400 LOOP
        EXECUTE format(
            'INSERT INTO %I (id, aggregate_type, aggregate_id, event_type, payload)
             SELECT gen_random_uuid(), ''device'', ''BENCH-'' || lpad((random() * 120000)::int::text, 7, ''0''),
                    ''execution.status.changed'',
                    jsonb_build_object(''execution_id'', g, ''job_id'', gen_random_uuid(), ''device_id'', ''BENCH-0001234'',
                                       ''from'', ''downloading'', ''to'', ''flashing'', ''reported'', ''flashing'',
                                       ''reason'', null, ''message_id'', g || ''-1-3-flashing'')
             FROM generate_series(1, 500) g', tbl);
        COMMIT;
        started := clock_timestamp();
        IF from_floor THEN
            EXECUTE format(
                'SELECT array_agg(id), coalesce(max(seq) + 1, $1) FROM (SELECT id, seq FROM %I
                 WHERE seq >= $1 AND sent_at IS NULL AND next_attempt_at <= now() ORDER BY seq LIMIT 500) s', tbl)
                INTO ids, floor USING floor;
        ELSE
            EXECUTE format(
                'SELECT array_agg(id) FROM (SELECT id FROM %I
                 WHERE sent_at IS NULL AND next_attempt_at <= now() ORDER BY seq LIMIT 500) s', tbl)
                INTO ids;
        END IF;
        EXECUTE format('UPDATE %I SET sent_at = now() WHERE id = ANY($1)', tbl) USING ids;
        COMMIT;
        relaying := relaying + (clock_timestamp() - started);
    END LOOP;
    RAISE NOTICE '%: relay rounds took %', tbl, relaying;
END $$;

\timing on
CHECKPOINT;
CALL relay_rounds('outbox_before', false);
CHECKPOINT;
CALL relay_rounds('outbox_after', true);
\timing off
SELECT pg_sleep(1);
SELECT relname AS outbox, n_tup_hot_upd AS hot_updates, n_tup_upd AS updates,
       pg_size_pretty(pg_table_size(relid)) AS heap, pg_size_pretty(pg_indexes_size(relid)) AS indexes
FROM pg_stat_user_tables WHERE relname LIKE 'outbox_%' ORDER BY relname DESC;
DROP PROCEDURE relay_rounds;
DROP TABLE outbox_before, outbox_after;
