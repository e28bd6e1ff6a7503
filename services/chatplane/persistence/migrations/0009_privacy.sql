-- Export (docs/privacy.md): one user's messages in message id order, without a scan of
-- every tenant's messages.
CREATE INDEX messages_by_owner_id ON messages (tenant_id, user_id, message_id);
