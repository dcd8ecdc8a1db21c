-- A dead-lettered event keeps its place in the stream: replayed, it goes
-- back into the outbox with its own `seq` (and id), found by the relay
-- among the retries below its floor, so consumers that order one
-- aggregate's events by `seq` see it where it happened. NULL for events
-- dead-lettered before this column: they take a new number when replayed.
ALTER TABLE event_dead_letter ADD COLUMN seq BIGINT;
