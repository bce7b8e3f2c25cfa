DROP TABLE IF EXISTS audit_log, connection_events, outbox, user_commits, latest, readings, events, records;
