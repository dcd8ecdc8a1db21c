-- Upgrading: stop every replica of an earlier version before this runs.
-- Their manifests carry no security counter (format 1), which devices
-- that check counters refuse, and they would not reload rotated keys.

-- Anti-rollback and key rotation.

-- A firmware's security counter: a device refuses a manifest whose counter
-- is below the one it runs (Uptane's rollback protection). A job that
-- would lower a device's counter is refused unless an admin marked the
-- image as an allowed downgrade (who, when and why are kept here and in
-- the audit log).
ALTER TABLE firmware
    ADD COLUMN security_counter     BIGINT NOT NULL DEFAULT 0 CHECK (security_counter >= 0),
    ADD COLUMN downgrade_allowed_by TEXT,
    ADD COLUMN downgrade_allowed_at TIMESTAMPTZ,
    ADD COLUMN downgrade_reason     TEXT,
    ADD CHECK ((downgrade_allowed_by IS NULL) = (downgrade_allowed_at IS NULL));

-- The counter of the firmware a device last installed, as far as the host
-- knows (the device itself is the final judge).
ALTER TABLE devices
    ADD COLUMN security_counter BIGINT NOT NULL DEFAULT 0 CHECK (security_counter >= 0);

-- Key rotation: a new key is endorsed by the key it replaces (its public key
-- signed by the old one), so a device that trusts the old key can trust the
-- new one without another channel. A retired key is no longer published nor
-- trusted for download tokens.
ALTER TABLE signing_keys
    ADD COLUMN endorsed_by  TEXT REFERENCES signing_keys (id),
    ADD COLUMN endorsement  BYTEA CHECK (endorsement IS NULL OR length(endorsement) = 64),
    ADD COLUMN retired_at   TIMESTAMPTZ,
    ADD CHECK (NOT (active AND retired_at IS NOT NULL));
-- At most one key signs.
CREATE UNIQUE INDEX signing_keys_one_active_idx ON signing_keys (active) WHERE active;
