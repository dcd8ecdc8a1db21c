-- Absence is the normal case: a job delivers until its deadline (default
-- 14 days from its start), and the progress timeout counts from the
-- device's last status, not from the dispatch.
ALTER TABLE jobs
    ADD COLUMN delivery_deadline_secs INTEGER NOT NULL DEFAULT 1209600
        CHECK (delivery_deadline_secs > 0);

-- When the device last reported progress on its current update.
ALTER TABLE executions ADD COLUMN reported_at TIMESTAMPTZ;

-- `expired`: not delivered by the deadline (the generated `stage` counts
-- it as finished, as every status it does not name).
ALTER TABLE executions DROP CONSTRAINT executions_status_check;
ALTER TABLE executions ADD CONSTRAINT executions_status_check CHECK (status IN (
    'queued', 'dispatched', 'init', 'downloading', 'flashing', 'rebooting',
    'done', 'error', 'timed_out', 'expired', 'cancelled'));
