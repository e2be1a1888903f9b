-- Group conversations, members with read positions, a sequence per conversation, and
-- notices in users' streams.
--
-- * conversations: of two kinds. A direct one has its pair (participant_a < participant_b);
--   a group has a name and its creator, no pair. Both count their entries (last_seq) and
--   members (member_count); a group's members_version moves with every change of its name,
--   members or roles (sends do not move it).
-- * messages: every entry of a conversation takes the next seq (1, 2, 3, ...). A group's
--   entries (its messages and its system entries, which carry `system`) have no receiver and
--   take no position in any user's stream; direct messages keep both positions.
-- * members: one row per member of a conversation of either kind (the two users of a direct
--   one), with where they read up to. A member who leaves loses the row.
-- * stream_notices: what else a user's stream holds besides direct messages: joining or
--   leaving a group, reading a conversation. The positions come from stream_heads like those
--   of direct messages, so a stream stays 1, 2, 3, ... without holes.
--
-- SQLite cannot drop NOT NULL from a column, so conversations and messages are built anew and
-- their rows copied over. The old tables are renamed first, which carries the messages'
-- reference to conversations along to the renamed table; the new ones are dropped in the
-- order that leaves no row pointing at a missing one, so foreign keys stay on throughout.

DROP TRIGGER messages_move_streams;
ALTER TABLE messages RENAME TO messages_old;
ALTER TABLE conversations RENAME TO conversations_old;

CREATE TABLE conversations (
    id              TEXT PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    participant_a   TEXT REFERENCES users (id),
    participant_b   TEXT REFERENCES users (id),
    name            TEXT,
    created_by      TEXT REFERENCES users (id),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    last_message_id TEXT NOT NULL DEFAULT '',
    last_seq        INTEGER NOT NULL,
    members_version INTEGER NOT NULL,
    member_count    INTEGER NOT NULL,
    CHECK (CASE kind
        WHEN 'direct' THEN participant_a IS NOT NULL AND participant_b IS NOT NULL
            AND participant_a < participant_b AND name IS NULL AND created_by IS NULL
        ELSE participant_a IS NULL AND participant_b IS NULL AND name IS NOT NULL AND created_by IS NOT NULL
    END)
);

CREATE TABLE messages (
    id                TEXT PRIMARY KEY NOT NULL,
    conversation_id   TEXT NOT NULL REFERENCES conversations (id),
    seq               INTEGER NOT NULL,
    sender_id         TEXT NOT NULL REFERENCES users (id),
    receiver_id       TEXT REFERENCES users (id),
    body              TEXT NOT NULL,
    system            TEXT,
    created_at        TEXT NOT NULL,
    client_message_id TEXT,
    sender_position   INTEGER,
    receiver_position INTEGER,
    CHECK (CASE WHEN receiver_id IS NULL
        THEN sender_position IS NULL AND receiver_position IS NULL
        ELSE sender_position IS NOT NULL AND receiver_position IS NOT NULL AND system IS NULL
    END)
);

-- Every message stored so far is direct; its seq numbers its conversation in id (creation)
-- order.
INSERT INTO conversations
    (id, kind, participant_a, participant_b, created_at, updated_at, last_message_id, last_seq,
     members_version, member_count)
SELECT c.id, 'direct', c.participant_a, c.participant_b, c.created_at, c.updated_at, c.last_message_id,
    (SELECT COUNT(*) FROM messages_old m WHERE m.conversation_id = c.id), 0, 2
FROM conversations_old c;

INSERT INTO messages
    (id, conversation_id, seq, sender_id, receiver_id, body, created_at, client_message_id,
     sender_position, receiver_position)
SELECT id, conversation_id, ROW_NUMBER() OVER (PARTITION BY conversation_id ORDER BY id),
    sender_id, receiver_id, body, created_at, client_message_id, sender_position, receiver_position
FROM messages_old;

DROP TABLE messages_old;
DROP TABLE conversations_old;

-- The indexes of migrations 0001, 0002 and 0004, on the new tables. The stream indexes leave
-- out group entries, which have no stream positions (a comparison on the position implies
-- the index's condition, so the stream reads still use them).
CREATE UNIQUE INDEX conversations_pair ON conversations (participant_a, participant_b);
CREATE INDEX conversations_a_recent ON conversations (participant_a, updated_at, last_message_id, id);
CREATE INDEX conversations_b_recent ON conversations (participant_b, updated_at, last_message_id, id);
CREATE INDEX messages_conversation_id ON messages (conversation_id, id);
CREATE UNIQUE INDEX messages_conversation_seq ON messages (conversation_id, seq);
CREATE UNIQUE INDEX messages_sender_stream ON messages (sender_id, sender_position)
    WHERE sender_position IS NOT NULL;
CREATE UNIQUE INDEX messages_receiver_stream ON messages (receiver_id, receiver_position)
    WHERE receiver_position IS NOT NULL;
CREATE UNIQUE INDEX messages_client_id ON messages (sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;

-- `kind` repeats the conversation's (which never changes), so that a user's groups are one
-- range of members_user_groups however many direct conversations they have.
CREATE TABLE members (
    conversation_id      TEXT NOT NULL REFERENCES conversations (id),
    user_id              TEXT NOT NULL REFERENCES users (id),
    kind                 TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    role                 TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    joined_at            TEXT NOT NULL,
    joined_seq           INTEGER NOT NULL,
    read_seq             INTEGER NOT NULL,
    last_read_message_id TEXT,
    PRIMARY KEY (conversation_id, user_id)
) WITHOUT ROWID;
-- Members in joining order (of those who joined with one entry, by id).
CREATE INDEX members_joining ON members (conversation_id, joined_seq, user_id);
CREATE INDEX members_user_groups ON members (user_id, conversation_id) WHERE kind = 'group';

-- Both users of every direct conversation, joined at its first message, with everything
-- stored before this migration read.
INSERT INTO members
    (conversation_id, user_id, kind, role, joined_at, joined_seq, read_seq, last_read_message_id)
SELECT id, participant_a, 'direct', 'member', created_at, 1, last_seq, NULLIF(last_message_id, '')
FROM conversations
UNION ALL
SELECT id, participant_b, 'direct', 'member', created_at, 1, last_seq, NULLIF(last_message_id, '')
FROM conversations;

CREATE TABLE stream_notices (
    user_id         TEXT NOT NULL REFERENCES users (id),
    position        INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('joined', 'left', 'read')),
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq             INTEGER NOT NULL,
    -- The message read up to, of a `read` notice.
    message_id      TEXT,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, position),
    CHECK ((kind = 'read') = (message_id IS NOT NULL))
) WITHOUT ROWID;
-- A user's joinings and leavings, by group and in stream order; covering, so that reading them
-- costs nothing per read notice.
CREATE INDEX stream_notices_membership ON stream_notices (user_id, conversation_id, position, kind, seq)
    WHERE kind <> 'read';

-- The trigger of migration 0004, for direct messages only (group entries are written with
-- their conversation's row locked first, see src/groups.rs), now also taking the message's
-- seq into its conversation and moving the sender's read position to it: a direct send stays
-- one statement. MAX and `read_seq <` keep everything from moving back.
CREATE TRIGGER messages_move_streams AFTER INSERT ON messages WHEN NEW.receiver_id IS NOT NULL
BEGIN
    INSERT INTO stream_heads (user_id, position)
    VALUES (NEW.sender_id, NEW.sender_position), (NEW.receiver_id, NEW.receiver_position)
    ON CONFLICT (user_id) DO UPDATE SET position = MAX(stream_heads.position, excluded.position);
    UPDATE conversations SET
        updated_at = MAX(updated_at, NEW.created_at),
        last_message_id = MAX(last_message_id, NEW.id),
        last_seq = MAX(last_seq, NEW.seq)
    WHERE id = NEW.conversation_id;
    UPDATE members SET read_seq = NEW.seq, last_read_message_id = NEW.id
    WHERE conversation_id = NEW.conversation_id AND user_id = NEW.sender_id AND read_seq < NEW.seq;
END;
