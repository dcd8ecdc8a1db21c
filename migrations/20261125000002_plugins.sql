-- Plugins uploaded by admins (bytes in the object store) and the
-- enabled/disabled state of every plugin, shipped ones included.
CREATE TABLE plugins (
    name            TEXT PRIMARY KEY,
    kind            TEXT CHECK (kind IN ('rollout', 'device')),
    version         TEXT,
    sha256          TEXT,
    -- Object-store key of an uploaded component; NULL for state-only rows.
    storage_key     TEXT,
    enabled         BOOLEAN NOT NULL DEFAULT true,
    disabled_reason TEXT,
    updated_by      TEXT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
