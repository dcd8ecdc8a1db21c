-- What building an `execution.status.changed` payload costs PostgreSQL a
-- row (BENCHMARKS.md item 32): the twelve documented fields with
-- jsonb_build_object, the seven of the code before the consolidation, two
-- other ways to build the twelve, and the UUIDs every row makes (the
-- baseline to subtract). Run with `psql -f bench/sql/event-payload.sql`
-- on any database; each statement prints its time.
\timing on
SELECT count(jsonb_build_object('schema', 1, 'execution_id', i, 'job_id', gen_random_uuid(),
       'device_id', 'BENCH-' || i, 'attempt', 1, 'from', 'queued', 'to', 'dispatched',
       'reported', NULL::text, 'reason', NULL::text, 'message_id', NULL::text,
       'progress', NULL::int2, 'cause', 'dispatch'))
FROM generate_series(1, 500000) i;
SELECT count(jsonb_build_object('execution_id', i, 'job_id', gen_random_uuid(),
       'device_id', 'BENCH-' || i, 'from', 'queued', 'to', 'dispatched', 'attempt', 1))
FROM generate_series(1, 500000) i;
SELECT count(json_build_object('schema', 1, 'execution_id', i, 'job_id', gen_random_uuid(),
       'device_id', 'BENCH-' || i, 'attempt', 1, 'from', 'queued', 'to', 'dispatched',
       'reported', NULL::text, 'reason', NULL::text, 'message_id', NULL::text,
       'progress', NULL::int2, 'cause', 'dispatch')::jsonb)
FROM generate_series(1, 500000) i;
SELECT count(format('{"schema":1,"execution_id":%s,"job_id":"%s","device_id":%s,"attempt":%s,'
       '"from":%s,"to":%s,"reported":null,"reason":null,"message_id":null,"progress":null,'
       '"cause":%s}', i, gen_random_uuid(), to_json('BENCH-' || i), 1, to_json('queued'::text),
       to_json('dispatched'::text), to_json('dispatch'::text))::jsonb)
FROM generate_series(1, 500000) i;
SELECT count(gen_random_uuid()) FROM generate_series(1, 500000) i;
