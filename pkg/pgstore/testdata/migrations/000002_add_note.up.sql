ALTER TABLE items ADD COLUMN note text;
INSERT INTO items (id, name) VALUES (1, 'seed');
