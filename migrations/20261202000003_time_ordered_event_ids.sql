-- Outbox events written by SQL statements (claims, timeouts, job actions)
-- got random UUIDs (v4): each insert landed on a random leaf of the
-- primary key, dirtying (and after a checkpoint, logging in full) a page
-- per event. Rollway's own code gives events time-ordered v7 ids; this
-- function gives SQL the same: 48 bits of Unix milliseconds, version 7,
-- then randomness, so a statement's events fill the rightmost leaves.
CREATE FUNCTION rollway_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;
