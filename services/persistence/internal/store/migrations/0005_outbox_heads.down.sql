DROP TRIGGER outbox_heads_delete ON outbox;
DROP TRIGGER outbox_heads_insert ON outbox;
DROP FUNCTION outbox_heads_delete();
DROP FUNCTION outbox_heads_insert();
DROP TABLE outbox_heads;
