DROP TABLE IF EXISTS connection_events;
DROP TABLE IF EXISTS oauth_states;
DROP TABLE IF EXISTS connections;
