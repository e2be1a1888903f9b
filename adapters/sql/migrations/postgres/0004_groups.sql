-- Group conversations, members with read positions, a sequence per conversation, and
-- notices in users' streams.
--
-- * conversations: of two kinds. A direct one has its pair (participant_a < participant_b);
--   a group has a name and its creator, no pair. Both count their entries (last_seq) and
--   members (member_count); a group's members_version moves with every change of its name,
--   members or roles (sends do not move it).
-- * messages: every entry of a conversation takes the next seq (1, 2, 3, ...), inside a
--   transaction that holds the conversation's row locked, so that seq n+1 commits after seq n.
--   A group's entries (its messages and its system entries, which carry `system`) have no
--   receiver and take no position in any user's stream; direct messages keep both positions.
-- * members: one row per member of a conversation of either kind (the two users of a direct
--   one), with where they read up to. A member who leaves loses the row.
-- * stream_notices: what else a user's stream holds besides direct messages: joining or
--   leaving a group, reading a conversation. The positions come from stream_heads like those
--   of direct messages, so a stream stays 1, 2, 3, ... without holes.
--
-- Locks are taken in one order (src/postgres.rs, src/groups.rs): a conversation's row, then
-- stream heads in ascending user id order, then member rows.

ALTER TABLE conversations
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'direct' CHECK (kind IN ('direct', 'group')),
    ADD COLUMN name TEXT,
    ADD COLUMN created_by TEXT COLLATE "C" REFERENCES users (id),
    ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN members_version BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN member_count BIGINT NOT NULL DEFAULT 2,
    ALTER COLUMN participant_a DROP NOT NULL,
    ALTER COLUMN participant_b DROP NOT NULL,
    ADD CONSTRAINT conversations_kind_shape CHECK (CASE kind
        WHEN 'direct' THEN participant_a IS NOT NULL AND participant_b IS NOT NULL
            AND name IS NULL AND created_by IS NULL
        ELSE participant_a IS NULL AND participant_b IS NULL AND name IS NOT NULL AND created_by IS NOT NULL
    END);
-- The defaults were for the rows already there, all direct: every insert names its values.
ALTER TABLE conversations
    ALTER COLUMN kind DROP DEFAULT,
    ALTER COLUMN last_seq DROP DEFAULT,
    ALTER COLUMN members_version DROP DEFAULT,
    ALTER COLUMN member_count DROP DEFAULT;

ALTER TABLE messages
    ADD COLUMN seq BIGINT,
    ADD COLUMN system TEXT,
    ALTER COLUMN receiver_id DROP NOT NULL,
    ALTER COLUMN sender_position DROP NOT NULL,
    ALTER COLUMN receiver_position DROP NOT NULL;

-- Every message stored so far is direct; its seq numbers its conversation in id (creation)
-- order.
UPDATE messages m SET seq = numbered.seq
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY conversation_id ORDER BY id) AS seq FROM messages) AS numbered
WHERE numbered.id = m.id;
UPDATE conversations c SET last_seq = counted.entries
FROM (SELECT conversation_id, COUNT(*) AS entries FROM messages GROUP BY conversation_id) AS counted
WHERE counted.conversation_id = c.id;

ALTER TABLE messages
    ALTER COLUMN seq SET NOT NULL,
    ADD CONSTRAINT messages_kind_shape CHECK (CASE WHEN receiver_id IS NULL
        THEN sender_position IS NULL AND receiver_position IS NULL
        ELSE sender_position IS NOT NULL AND receiver_position IS NOT NULL AND system IS NULL
    END);
CREATE UNIQUE INDEX messages_conversation_seq ON messages (conversation_id, seq);
-- The stream indexes leave out group entries, which have no stream positions (a comparison on
-- the position implies the index's condition, so the stream reads still use them).
DROP INDEX messages_sender_stream;
DROP INDEX messages_receiver_stream;
CREATE UNIQUE INDEX messages_sender_stream ON messages (sender_id, sender_position)
    WHERE sender_position IS NOT NULL;
CREATE UNIQUE INDEX messages_receiver_stream ON messages (receiver_id, receiver_position)
    WHERE receiver_position IS NOT NULL;

-- `kind` repeats the conversation's (which never changes), so that a user's groups are one
-- range of members_user_groups however many direct conversations they have.
CREATE TABLE members (
    conversation_id      TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    user_id              TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    kind                 TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    role                 TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at            TIMESTAMPTZ NOT NULL,
    joined_seq           BIGINT NOT NULL,
    read_seq             BIGINT NOT NULL,
    last_read_message_id TEXT COLLATE "C",
    PRIMARY KEY (conversation_id, user_id)
);
-- Members in joining order (of those who joined with one entry, by id).
CREATE INDEX members_joining ON members (conversation_id, joined_seq, user_id);
CREATE INDEX members_user_groups ON members (user_id, conversation_id) WHERE kind = 'group';

-- Both users of every direct conversation, joined at its first message, with everything
-- stored before this migration read.
INSERT INTO members
    (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq, last_read_message_id)
SELECT c.id, pair.user_id, 'direct', 'member', c.created_at, 1, c.last_seq, NULLIF(c.last_message_id, '')
FROM conversations c, LATERAL (VALUES (c.participant_a), (c.participant_b)) AS pair (user_id);

CREATE TABLE stream_notices (
    user_id         TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    position        BIGINT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('joined', 'left', 'read')),
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL,
    -- The message read up to, of a `read` notice.
    message_id      TEXT COLLATE "C",
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, position),
    CHECK ((kind = 'read') = (message_id IS NOT NULL))
);
-- A user's joinings and leavings, by group and in stream order; covering, so that reading them
-- costs nothing per read notice.
CREATE INDEX stream_notices_membership ON stream_notices (user_id, conversation_id, position)
    INCLUDE (kind, seq) WHERE kind <> 'read';
