-- How far apart a running job's evaluations are at the least. The
-- scheduler sets it from what reading the job's snapshot cost (ten times
-- that, between half a second and 30 s), so that counting a large job's
-- executions takes a bounded share of the database however fast its
-- statuses arrive; `touch_jobs` brings an evaluation forward no closer
-- than this.
ALTER TABLE jobs ADD COLUMN evaluation_gap_ms INTEGER NOT NULL DEFAULT 500
    CHECK (evaluation_gap_ms > 0);
