-- The stall sweep's index, made unusable for a lookup by device. The
-- dispatcher's claim probes, for each candidate execution, whether its
-- device has an update in flight (`device_id = … AND stage = 'in_flight'`).
-- With statistics from before a large job's executions were dispatched
-- (both partial indexes looked empty), the planner served that probe from
-- this index, reading every execution in flight for each candidate: claims
-- of 500 took seconds, then minutes, as a 230,000-device job went out.
-- A predicate the probe does not imply leaves it the index on `device_id`;
-- the sweep's `dispatched_at < …` implies it, so the sweep keeps its range
-- scan. (Every execution in flight has `dispatched_at`.)
DROP INDEX executions_in_flight_since_idx;
CREATE INDEX executions_in_flight_since_idx ON executions (dispatched_at)
    WHERE stage = 'in_flight' AND dispatched_at IS NOT NULL;
