-- Roles of an API key (chatplane.common.roles): sorted names separated by one space. Keys
-- made before roles existed were end-user keys, so they get 'chat'.
ALTER TABLE api_keys ADD COLUMN roles text NOT NULL DEFAULT 'chat' CHECK (roles <> '');
