-- What Rollway expects a device to run: the version it last installed
-- there, else what the device's registration or first report said. A
-- device that reports another version was flashed outside Rollway (a
-- repair shop, a technician's laptop): it drifted. What it reports is
-- still what it runs (`firmware_version`); `drift` flags the difference
-- until Rollway installs a version there again.
ALTER TABLE devices ADD COLUMN expected_version TEXT;
UPDATE devices SET expected_version = firmware_version WHERE firmware_version IS NOT NULL;
ALTER TABLE devices ADD COLUMN drift BOOLEAN NOT NULL GENERATED ALWAYS AS (
    expected_version IS NOT NULL AND firmware_version IS DISTINCT FROM expected_version) STORED;
CREATE INDEX devices_drift_idx ON devices (id) WHERE drift;
