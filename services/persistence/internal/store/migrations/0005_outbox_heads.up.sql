-- outbox_heads: the first pending entry (head) of every key that has pending
-- outbox entries. Leasing walks it in head_id order and stops after the
-- batch it wants, so a lease costs the same however many keys are pending
-- (finding each key's head in outbox itself probes every pending key).
-- Triggers on outbox keep it exact: an insert makes its entries' keys
-- pending (a key's later entries never undercut its head: ids of one key
-- follow commit order); a delete locks the heads of its keys and, in a new
-- statement that sees every transaction committed before the lock, moves
-- each to the key's first remaining entry or removes it. A writer's insert
-- locks the same row (ON CONFLICT DO UPDATE), so a delete that removes a
-- key's last entry waits for a writer adding to the key, and a writer waits
-- for such a delete and then puts the row back.
CREATE TABLE outbox_heads (
    key     text COLLATE "C" PRIMARY KEY,
    head_id bigint           NOT NULL
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
CREATE INDEX outbox_heads_head_id ON outbox_heads (head_id);

CREATE FUNCTION outbox_heads_insert() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO outbox_heads AS h (key, head_id)
    SELECT key, min(id) FROM new_entries GROUP BY key ORDER BY key
    ON CONFLICT (key) DO UPDATE SET head_id = LEAST(h.head_id, EXCLUDED.head_id);
    RETURN NULL;
END
$$;

CREATE FUNCTION outbox_heads_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    ks text[];
BEGIN
    SELECT array_agg(DISTINCT key) INTO ks FROM old_entries;
    IF ks IS NULL THEN
        RETURN NULL;
    END IF;
    -- Lock in key order (writers' inserts lock in key order too).
    PERFORM 1 FROM outbox_heads WHERE key = ANY (ks) ORDER BY key FOR UPDATE;
    -- A volatile function's statements each take a new snapshot: these see
    -- every entry committed by a writer that held one of the locks.
    WITH f AS (
        SELECT k.key, (SELECT o.id FROM outbox o WHERE o.key = k.key ORDER BY o.id LIMIT 1) AS first_id
        FROM unnest(ks) AS k(key)
    ), moved AS (
        UPDATE outbox_heads h SET head_id = f.first_id
        FROM f WHERE h.key = f.key AND f.first_id IS NOT NULL AND h.head_id <> f.first_id
    )
    DELETE FROM outbox_heads h USING f WHERE h.key = f.key AND f.first_id IS NULL;
    RETURN NULL;
END
$$;

-- No entry may change while the heads are filled in.
LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO outbox_heads (key, head_id) SELECT key, min(id) FROM outbox GROUP BY key;

CREATE TRIGGER outbox_heads_insert AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_insert();
CREATE TRIGGER outbox_heads_delete AFTER DELETE ON outbox
    REFERENCING OLD TABLE AS old_entries FOR EACH STATEMENT EXECUTE FUNCTION outbox_heads_delete();
