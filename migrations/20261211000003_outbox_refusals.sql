-- Two counts per outbox event. `attempts` (which puts it in the retry
-- index, below the relay's floor) now counts every failed or held-back
-- try: an event that failed for any reason, or waits behind an earlier
-- event of its key, no longer holds the floor, so the relay's reads do not
-- grow with what was sent meanwhile. It returns to 0 when the event is
-- sent. `refusals` counts only the tries the broker refused the event for
-- what it is (too large, invalid): those decide its backoff and, at
-- ROLLWAY_OUTBOX_MAX_ATTEMPTS, the dead letter table.
ALTER TABLE event_outbox ADD COLUMN refusals INTEGER NOT NULL DEFAULT 0;
UPDATE event_outbox SET refusals = attempts WHERE attempts > 0 AND sent_at IS NULL;
