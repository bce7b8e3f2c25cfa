-- Provenance: the event (record version) each reading came from. A
-- record's readings are replaced with every version, so this is always the
-- record's current event; it lets a reading be traced to the Kafka message
-- that published it.
ALTER TABLE readings ADD COLUMN event_id uuid;
