-- Reads that an index answers, however many users and conversations there are.
--
-- 1. User search matches the start of the lower-cased username (through users_username_lower)
-- or of the lower-cased full name or one of its words (space-separated), through this table
-- of every user's name words (`application::ports::name_words`), written with the user. It
-- carries the lower-cased username (which never changes), so that the matches of a prefix
-- are ordered and cut to a page from this table alone, without reading a user row.
CREATE TABLE user_name_words (
    word           TEXT NOT NULL,
    username_lower TEXT NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (word, username_lower)
) WITHOUT ROWID;

WITH RECURSIVE split (user_id, username_lower, word, rest) AS (
    SELECT id, username_lower, full_name_lower, full_name_lower || ' ' FROM users
    UNION ALL
    SELECT user_id, username_lower, substr(rest, 1, instr(rest, ' ') - 1), substr(rest, instr(rest, ' ') + 1)
    FROM split WHERE rest <> ''
)
INSERT OR IGNORE INTO user_name_words (word, username_lower, user_id)
SELECT word, username_lower, user_id FROM split WHERE word <> '';

-- 2. A user's conversation list is read in pages, in the order of
-- `application::ports::ConversationKey`: updated_at, then the last message's id, then the
-- conversation's id, all descending. The last message's id is kept on the conversation
-- ('' while it has none, which sorts below every id), so that each participant's side of
-- the list is one index range from any cursor on.
ALTER TABLE conversations ADD COLUMN last_message_id TEXT NOT NULL DEFAULT '';
UPDATE conversations SET last_message_id =
    COALESCE((SELECT MAX(id) FROM messages WHERE conversation_id = conversations.id), '');
CREATE INDEX conversations_a_recent ON conversations (participant_a, updated_at, last_message_id, id);
CREATE INDEX conversations_b_recent ON conversations (participant_b, updated_at, last_message_id, id);
-- A prefix of conversations_b_recent.
DROP INDEX conversations_b;

-- The trigger of migration 0003, now also moving the conversation's last message (MAX: ids
-- sort by creation, and rows may arrive in any order).
DROP TRIGGER messages_move_streams;
CREATE TRIGGER messages_move_streams AFTER INSERT ON messages
BEGIN
    INSERT INTO stream_heads (user_id, position)
    VALUES (NEW.sender_id, NEW.sender_position), (NEW.receiver_id, NEW.receiver_position)
    ON CONFLICT (user_id) DO UPDATE SET position = MAX(stream_heads.position, excluded.position);
    UPDATE conversations SET
        updated_at = MAX(updated_at, NEW.created_at),
        last_message_id = MAX(last_message_id, NEW.id)
    WHERE id = NEW.conversation_id;
END;
