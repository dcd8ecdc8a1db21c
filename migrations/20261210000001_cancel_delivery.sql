-- A cancel that must reach its device. When an operator (or a rollout
-- aborting) cancels an execution whose device has its command, the device
-- is told to stop: `pending` until the dispatcher publishes the signed
-- cancel, `sent` until the device answers (`cancelled`, or the `done` or
-- `error` it reached), then `answered`. A `sent` cancel goes out again when
-- its device says hello. NULL: nothing to tell the device.
ALTER TABLE executions ADD COLUMN cancel_delivery TEXT
    CHECK (cancel_delivery IN ('pending', 'sent', 'answered'));

-- The dispatcher's round looks for cancels to publish: nearly always none.
CREATE INDEX executions_cancel_pending_idx ON executions (id) WHERE cancel_delivery = 'pending';
