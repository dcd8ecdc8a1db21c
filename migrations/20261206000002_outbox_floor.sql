-- The relay finds unsent events from a floor, not through an index on
-- unsent rows, so that no index of event_outbox names `sent_at`: marking an
-- event sent changes no indexed value and PostgreSQL writes it as a
-- heap-only update on the same page, in the half of each page the
-- fillfactor keeps free (BENCHMARKS.md, item 23). Before, each sent event
-- became a new row version with entries in three indexes, and the relay's
-- reads walked the dead entries those left in the unsent index.
--
-- relay_leases.floor_seq: every event below it is sent, dead-lettered, or
-- failed and found again through event_outbox_retry_idx (attempts > 0).
-- The relay raises it only past sequence numbers no running transaction
-- can still commit (relay.rs).
DROP INDEX event_outbox_unsent_seq_idx;
DROP INDEX event_outbox_sent_seq_idx;
DROP INDEX event_outbox_sent_age_idx;
CREATE UNIQUE INDEX event_outbox_seq_idx ON event_outbox (seq);
CREATE INDEX event_outbox_retry_idx ON event_outbox (seq) WHERE attempts > 0;
-- Retention deletes sent events by age; events arrive in time order.
CREATE INDEX event_outbox_age_idx ON event_outbox USING brin (occurred_at);
ALTER TABLE event_outbox SET (fillfactor = 50);
ALTER TABLE relay_leases ADD COLUMN floor_seq BIGINT NOT NULL DEFAULT 0;

-- A transaction takes its transaction id before it takes a sequence
-- number, so that the relay can tell from a snapshot when every number up
-- to some value is either committed or never will be: the identity column
-- becomes a plain sequence whose default asks for the transaction id first.
ALTER TABLE event_outbox ALTER COLUMN seq DROP IDENTITY;
DO $$
DECLARE
    next BIGINT;
BEGIN
    SELECT coalesce(max(seq), 0) + 1 INTO next FROM event_outbox;
    EXECUTE format('CREATE SEQUENCE event_outbox_seq START WITH %s OWNED BY event_outbox.seq', next);
END $$;
CREATE FUNCTION rollway_outbox_seq() RETURNS BIGINT LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('event_outbox_seq') END
$$;
ALTER TABLE event_outbox ALTER COLUMN seq SET DEFAULT rollway_outbox_seq();
ALTER TABLE event_outbox ALTER COLUMN seq SET NOT NULL;
