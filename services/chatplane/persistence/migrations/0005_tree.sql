-- Conversation trees (docs/conversation-tree.md): regenerated answers and edited user
-- messages are siblings under one parent; a conversation shows one branch at a time.
-- Columns only, all NULL for rows written before: such messages form a linear chain in
-- creation order, and such conversations end at their newest message.

-- The message before this one on its branch ('' for a first message; NULL: not recorded).
ALTER TABLE messages ADD COLUMN parent_message_id text COLLATE "C";

-- The newest message of the active branch (NULL: the newest message of the conversation).
ALTER TABLE conversations ADD COLUMN active_message_id text COLLATE "C";
-- True once any message of the conversation has a sibling: from then on the Agent answers
-- from the branch (read from here) instead of the conversation's recent messages.
ALTER TABLE conversations ADD COLUMN branched boolean NOT NULL DEFAULT false;

-- The parent of the turn's new user message, or for a regenerated answer of the user message
-- it answers ('' for a first message; NULL: reserved before trees).
ALTER TABLE turns ADD COLUMN parent_message_id text COLLATE "C";
-- A regenerated answer's turn: the stored user message it answers. Its user_message_id is
-- then only the turn's key (a user message has one turn per answer), never a message id.
ALTER TABLE turns ADD COLUMN reply_to_message_id text COLLATE "C";
