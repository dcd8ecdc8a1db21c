-- BENCHMARKS.md, item 30: the status statement of `jobs::executions::record`
-- (one statement: the executions' rows, their log rows and their events)
-- against the three statements that wrote them before, alone on the
-- benchmarks' cluster, for batches of 300 statuses on 200,000 in-flight
-- executions. On a scratch database that `rollway migrate` prepared:
--
--   psql "$URL" -f bench/sql/status-statement.sql
--   for v in inputs one three; do
--     printf '\set first random(1, 199000)\nSELECT status_%s(:first, 300);\n' $v > /tmp/$v.pgb
--     pgbench -n -c 1 -T 15 -f /tmp/$v.pgb "$URL" | grep ^tps
--   done
--
-- `status_inputs` builds the batch's arrays alone (subtract its time).
INSERT INTO firmware (id, family, version, sha256, size, storage_key, created_by)
VALUES ('00000000-0000-0000-0000-000000000001', 'esp32', '1.0', repeat('a', 64), 1, 'k', 'bench');
INSERT INTO jobs (id, firmware_id, kind, start_at, status, targets, rollout_plugin,
                  device_timeout_secs, max_retries, created_by, started_at)
VALUES ('00000000-0000-0000-0000-0000000000aa', '00000000-0000-0000-0000-000000000001', 'immediate',
        now(), 'running', '{}', 'rollout-percent', 86400, 0, 'bench', now());
INSERT INTO devices (id, family, online, last_seen)
SELECT 'D' || lpad(i::text, 7, '0'), 'esp32', true, now() FROM generate_series(1, 200000) i;
INSERT INTO executions (job_id, device_id, batch_group, status, attempts, dispatched_at, reported_at)
SELECT '00000000-0000-0000-0000-0000000000aa', 'D' || lpad(i::text, 7, '0'), 0, 'downloading', 1,
       now() - interval '60 s', now()
FROM generate_series(1, 200000) i;
VACUUM ANALYZE;

CREATE OR REPLACE FUNCTION status_inputs(first bigint, n int,
    OUT ids bigint[], OUT loaded bigint[], OUT jobs uuid[], OUT devs text[], OUT mids text[], OUT eids uuid[], OUT payloads jsonb[])
LANGUAGE sql AS $$
  SELECT array_agg(id ORDER BY id), array_agg(version ORDER BY id), array_agg(job_id ORDER BY id), array_agg(device_id ORDER BY id),
         array_agg('m-' || id || '-' || version ORDER BY id), array_agg(gen_random_uuid() ORDER BY id),
         array_agg(jsonb_build_object('schema', 1, 'execution_id', id, 'job_id', job_id, 'device_id', device_id, 'attempt', 1,
                   'from', 'downloading', 'to', 'flashing', 'reported', 'flashing', 'reason', NULL, 'message_id', 'm-' || id,
                   'progress', NULL, 'cause', 'device') ORDER BY id)
  FROM executions WHERE id >= first AND id < first + n
$$;

CREATE OR REPLACE FUNCTION status_one(first bigint, n int) RETURNS bigint LANGUAGE plpgsql AS $f$
DECLARE i record; c bigint;
BEGIN
  SELECT * INTO i FROM status_inputs(first, n);
  WITH rows AS (
     UPDATE executions e
     SET status = u.status, progress = u.progress, last_error = u.last_error,
         finished_at = CASE WHEN u.finished THEN now() ELSE NULL END, reported_at = now(),
         updated_at = now(), version = u.loaded + 1
     FROM unnest(i.ids, array_fill('flashing'::text, ARRAY[n]), array_fill(NULL::int2, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
                 array_fill(false, ARRAY[n]), i.loaded)
          AS u(id, status, progress, last_error, finished, loaded)
     WHERE e.id = u.id AND e.version = u.loaded
     RETURNING e.id
  ), moved AS (
     SELECT * FROM unnest(i.ids, i.jobs, i.devs, array_fill(1, ARRAY[n]), array_fill('downloading'::text, ARRAY[n]),
                          array_fill('flashing'::text, ARRAY[n]), array_fill('flashing'::text, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
                          i.mids, array_fill(NULL::int2, ARRAY[n]), array_fill('device'::text, ARRAY[n]), i.eids, i.payloads)
          WITH ORDINALITY AS m(id, job_id, device_id, attempt, from_status, to_status,
                               reported, reason, message_id, progress, cause, event_id, payload, ord)
  ), logged AS (
     INSERT INTO execution_status_log (execution_id, status, progress, message, message_id)
     SELECT id, coalesce(reported, to_status), progress,
            coalesce(reason, CASE WHEN cause = 'dispatch' THEN 'attempt ' || attempt END), message_id
     FROM moved WHERE (SELECT count(*) FROM rows) = n ORDER BY ord
  ), events AS (
     INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
     SELECT event_id, 'device', device_id, 'execution.status.changed', payload
     FROM moved WHERE (SELECT count(*) FROM rows) = n ORDER BY ord
  )
  SELECT count(*) INTO c FROM rows;
  RETURN c;
END $f$;

CREATE OR REPLACE FUNCTION status_three(first bigint, n int) RETURNS bigint LANGUAGE plpgsql AS $f$
DECLARE i record; c bigint;
BEGIN
  SELECT * INTO i FROM status_inputs(first, n);
  UPDATE executions e
     SET status = u.status, progress = u.progress, last_error = u.last_error,
         finished_at = CASE WHEN u.finished THEN now() ELSE NULL END, reported_at = now(),
         updated_at = now(), version = u.loaded + 1
     FROM unnest(i.ids, array_fill('flashing'::text, ARRAY[n]), array_fill(NULL::int2, ARRAY[n]), array_fill(NULL::text, ARRAY[n]),
                 array_fill(false, ARRAY[n]), i.loaded)
          AS u(id, status, progress, last_error, finished, loaded)
     WHERE e.id = u.id AND e.version = u.loaded;
  GET DIAGNOSTICS c = ROW_COUNT;
  INSERT INTO execution_status_log (execution_id, status, progress, message, message_id)
     SELECT u.id, u.status, NULL, NULL, u.mid FROM unnest(i.ids, array_fill('flashing'::text, ARRAY[n]), i.mids) AS u(id, status, mid);
  INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, payload)
     SELECT u.id, 'device', u.device, 'execution.status.changed', u.payload
     FROM unnest(i.eids, i.devs, i.payloads) WITH ORDINALITY AS u(id, device, payload, ord) ORDER BY ord;
  RETURN c;
END $f$;
