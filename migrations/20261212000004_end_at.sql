-- A job's end time: nothing is dispatched after it, and what is not
-- finished by then ends `expired`, as at the delivery deadline.
ALTER TABLE jobs ADD COLUMN end_at TIMESTAMPTZ;
