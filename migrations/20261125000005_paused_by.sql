-- Who paused a job: an operator, or its rollout (a batch below its
-- threshold). Resuming a job its rollout paused approves the next batch.
ALTER TABLE jobs ADD COLUMN paused_by TEXT CHECK (paused_by IN ('operator', 'rollout'));
