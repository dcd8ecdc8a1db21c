-- The rollout contract of WIT 0.1.8: batch groups planned by device
-- attributes carry the strategy's label and may be spread over a tag, and
-- a strategy may limit how fast a job's commands go out.

-- The label a strategy gave the group (NULL for a plan by sizes), and its
-- spread: at most `spread_limit` of its devices that share a value of the
-- tag `spread_key` (one site) update at once.
ALTER TABLE job_batches
    ADD COLUMN label TEXT,
    ADD COLUMN spread_key TEXT,
    ADD COLUMN spread_limit INTEGER CHECK (spread_limit > 0),
    ADD CONSTRAINT job_batches_spread CHECK ((spread_key IS NULL) = (spread_limit IS NULL));

-- The dispatch rate the job's strategy set, in devices per minute across
-- every replica (NULL: no limit), as the job view shows it.
ALTER TABLE jobs ADD COLUMN dispatch_rate INTEGER CHECK (dispatch_rate > 0);

-- The dispatch limits of a job that has any (a rate, or a group spread
-- over a tag): one replica at a time claims for it, holding this row (not
-- the job's, which every status batch touches). The token bucket:
-- `allowance` devices may go out as of `updated_at`, and the allowance
-- grows at `per_minute`, up to two seconds' worth.
CREATE TABLE job_dispatch_limits (
    job_id     UUID PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    per_minute INTEGER CHECK (per_minute > 0),
    allowance  DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
