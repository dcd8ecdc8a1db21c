-- Processed message ids are deleted by age (`retention.rs`), oldest first,
-- and are inserted in time order: a BRIN index finds them at a fraction of
-- the cost per insert of the B-tree it replaces, which took an entry for
-- every status received.
DROP INDEX processed_messages_age_idx;
CREATE INDEX processed_messages_age_idx ON processed_messages USING brin (processed_at);
