-- What devices say about themselves. A device (or its gateway, for itself
-- and the devices behind it) announces on its presence topic when it
-- connects, with what it runs; its broker publishes its last will there
-- when it drops off. Every message from a device also moves `last_seen`.
-- Replicas of the previous version keep working beside this one: they
-- neither read nor write these columns.
ALTER TABLE devices
    ADD COLUMN online      BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN presence_at TIMESTAMPTZ,
    ADD COLUMN hardware    JSONB NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(hardware) = 'object');
