-- Reads that an index answers, however many users and conversations there are.
--
-- 1. User search matches the start of the lower-cased username (through users_username_lower)
-- or of the lower-cased full name or one of its words (space-separated), through this table
-- of every user's name words (`application::ports::name_words`), written with the user. It
-- carries the lower-cased username (which never changes), so that the matches of a prefix
-- are ordered and cut to a page from the index alone (an index-only scan), without reading
-- a user row. Byte order (COLLATE "C"), so that a prefix is one range of the index.
CREATE TABLE user_name_words (
    word           TEXT COLLATE "C" NOT NULL,
    username_lower TEXT COLLATE "C" NOT NULL,
    user_id        TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    PRIMARY KEY (word, username_lower) INCLUDE (user_id)
);

INSERT INTO user_name_words (word, username_lower, user_id)
SELECT DISTINCT words.word, users.username_lower, users.id
FROM users, LATERAL (
    SELECT users.full_name_lower
    UNION
    SELECT unnest(string_to_array(users.full_name_lower, ' '))
) AS words (word)
WHERE words.word <> '';

-- 2. A user's conversation list is read in pages, in the order of
-- `application::ports::ConversationKey`: updated_at, then the last message's id, then the
-- conversation's id, all descending. The last message's id is kept on the conversation
-- ('' while it has none, which sorts below every id), so that each participant's side of
-- the list is one index range from any cursor on. A send moves it (see `APPEND` in
-- src/postgres.rs).
ALTER TABLE conversations ADD COLUMN last_message_id TEXT COLLATE "C" NOT NULL DEFAULT '';
UPDATE conversations c SET last_message_id =
    COALESCE((SELECT MAX(id) FROM messages WHERE conversation_id = c.id), '');
CREATE INDEX conversations_a_recent ON conversations (participant_a, updated_at, last_message_id, id);
CREATE INDEX conversations_b_recent ON conversations (participant_b, updated_at, last_message_id, id);
-- A prefix of conversations_b_recent.
DROP INDEX conversations_b;
