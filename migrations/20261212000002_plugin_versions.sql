-- Every component uploaded for a plugin. A job runs on the rollout plugin
-- version it was created with (`jobs.rollout_plugin_sha256`), so a version
-- stays loadable while an unfinished job names it; an admin deletes it
-- once none does.
CREATE TABLE plugin_versions (
    sha256      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('rollout', 'device')),
    version     TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    uploaded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX plugin_versions_by_name ON plugin_versions (name, uploaded_at DESC);

INSERT INTO plugin_versions (sha256, name, kind, version, storage_key, uploaded_by, uploaded_at)
SELECT sha256, name, kind, COALESCE(version, ''), storage_key, updated_by, updated_at
FROM plugins
WHERE storage_key IS NOT NULL AND sha256 IS NOT NULL AND kind IS NOT NULL
ON CONFLICT DO NOTHING;

-- The rollout plugin's component (SHA-256) a job was created with; NULL for
-- jobs created before versions were kept (they follow the plugin in force).
ALTER TABLE jobs ADD COLUMN rollout_plugin_sha256 TEXT;
CREATE INDEX jobs_unfinished_rollout_versions ON jobs (rollout_plugin_sha256)
    WHERE status IN ('scheduled', 'running', 'paused');
