-- Plugin settings: every version an admin set, kept; the highest version
-- of a plugin is in force on every replica. A device plugin's settings go
-- to each of its calls; a rollout plugin's are the defaults under each
-- new job's rollout configuration.
CREATE TABLE plugin_configs (
    plugin  TEXT NOT NULL,
    version BIGINT NOT NULL CHECK (version > 0),
    config  JSONB NOT NULL CHECK (jsonb_typeof(config) = 'object'),
    set_by  TEXT NOT NULL,
    set_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (plugin, version)
);
