-- A command whose replica stopped before anyone could tell whether it left
-- is sent again under the same attempt; the execution stays `dispatched`
-- meanwhile, so the device's statuses keep applying.
ALTER TABLE executions ADD COLUMN resend BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX executions_resend_idx ON executions (id) WHERE resend;
