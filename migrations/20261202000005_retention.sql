-- Processed message ids are deleted by age (`retention.rs`), oldest first,
-- and are inserted in time order: a BRIN index finds them at a fraction of
-- the cost per insert of the B-tree it replaces, which took an entry for
-- every status received.
DROP INDEX processed_messages_age_idx;
CREATE INDEX processed_messages_age_idx ON processed_messages USING brin (processed_at);

-- Outbox indexes, each named by the query it serves:
-- - the relay reads unsent events in seq order (event_outbox_unsent_seq_idx);
--   the older index on (next_attempt_at, occurred_at) serves no query and
--   only costs every insert and every send;
-- - the live feed reads sent events by seq, the ones just announced and the
--   ones a reconnecting client missed: without an index on seq over sent
--   rows both scanned the table while a dashboard was open;
-- - retention deletes sent events by age: they are sent in roughly time
--   order, so a BRIN index on sent_at finds them for a few pages.
DROP INDEX event_outbox_pending_idx;
DROP INDEX event_outbox_sent_idx;
CREATE INDEX event_outbox_sent_seq_idx ON event_outbox (seq) WHERE sent_at IS NOT NULL;
CREATE INDEX event_outbox_sent_age_idx ON event_outbox USING brin (sent_at) WHERE sent_at IS NOT NULL;
