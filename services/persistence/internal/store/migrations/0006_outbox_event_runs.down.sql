-- Runs cannot be split back into rows here: refuse while any is pending
-- (let the publisher drain them first).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM outbox WHERE payload_type = 3) THEN
        RAISE EXCEPTION 'outbox holds event runs (payload_type 3): drain the outbox before migrating down';
    END IF;
END
$$;
ALTER SEQUENCE outbox_id_seq INCREMENT BY 1;
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTENDED;
ALTER TABLE outbox ALTER COLUMN payload SET COMPRESSION DEFAULT;
ALTER TABLE outbox DROP COLUMN lease_upto, DROP COLUMN sent, DROP COLUMN event_count;
