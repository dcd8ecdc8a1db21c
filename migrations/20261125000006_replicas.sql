-- The host processes sharing this database. Each writes a heartbeat; when
-- one falls silent, a live replica adopts its MQTT session (the statuses the
-- broker keeps queued for it) until it comes back.
CREATE TABLE replicas (
    instance_id  TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    version      TEXT NOT NULL,
    adopted_by   TEXT,
    adopted_at   TIMESTAMPTZ
);

-- Which replica claimed an execution's current command. A replica that
-- dies between its claim and the publication leaves `dispatched` rows whose
-- command may never have left; they are sent again (same attempt) when it
-- restarts or its session is adopted.
ALTER TABLE executions ADD COLUMN dispatched_by TEXT;
