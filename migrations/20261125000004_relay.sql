-- The outbox relay: a publication order, and the lease that makes one host
-- the relay at a time (so events of one aggregate stay in order).
ALTER TABLE event_outbox ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
CREATE INDEX event_outbox_unsent_seq_idx ON event_outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX event_outbox_sent_idx ON event_outbox (sent_at) WHERE sent_at IS NOT NULL;

CREATE TABLE relay_leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  TIMESTAMPTZ NOT NULL
);
