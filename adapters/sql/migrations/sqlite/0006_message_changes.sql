-- Message changes: replies, edits, deletions and reactions (docs/MESSAGE_CHANGES.md).
--
-- * messages: `reply_to` names the message a message answers (read back with its sender and
--   current text). A message that was ever changed has `version`, the seq of its last change
--   (null while it never changed: its version is its seq, so existing rows need no rewrite);
--   `body` holds its text now (U+2063 once deleted: the text is not kept), `edited_at` its
--   last edit, `deleted_at`/`deleted_by` its tombstone, `reactions` its reactions as a JSON
--   array of [emoji, user id] in the order they were made (null when none). The reactions
--   are written whole from the state the change rules decided on, under the conversation's
--   lock, and read with the row: one column, one snapshot, the same text on both engines.
-- * message_changes: every stored change is an entry of its conversation's sequence (a seq
--   of its own, after the message it changes); `emoji` only for reaction changes.
-- * stream_notices: a change of a direct message takes a position in both users' streams as
--   an `updated` notice naming the change's seq and its message. SQLite cannot change a
--   table's CHECK constraints, so the table is built anew and its rows copied over.

ALTER TABLE messages ADD COLUMN reply_to TEXT;
ALTER TABLE messages ADD COLUMN version INTEGER;
ALTER TABLE messages ADD COLUMN edited_at TEXT;
ALTER TABLE messages ADD COLUMN deleted_at TEXT;
ALTER TABLE messages ADD COLUMN deleted_by TEXT;
ALTER TABLE messages ADD COLUMN reactions TEXT;

-- The deleted messages of a conversation by seq: what the conversation list subtracts from
-- the unread count.
CREATE INDEX messages_deleted ON messages (conversation_id, seq) WHERE deleted_at IS NOT NULL;

CREATE TABLE message_changes (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq             INTEGER NOT NULL,
    message_id      TEXT NOT NULL REFERENCES messages (id),
    actor_id        TEXT NOT NULL REFERENCES users (id),
    kind            TEXT NOT NULL CHECK (kind IN ('edited', 'deleted', 'reactionAdded', 'reactionRemoved')),
    emoji           TEXT,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    CHECK ((kind IN ('reactionAdded', 'reactionRemoved')) = (emoji IS NOT NULL))
) WITHOUT ROWID;

CREATE TABLE stream_notices_new (
    user_id         TEXT NOT NULL REFERENCES users (id),
    position        INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('joined', 'left', 'read', 'updated')),
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq             INTEGER NOT NULL,
    -- The message read up to, of a `read` notice; the changed message, of an `updated` one.
    message_id      TEXT,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (user_id, position),
    CHECK ((kind IN ('read', 'updated')) = (message_id IS NOT NULL))
) WITHOUT ROWID;
INSERT INTO stream_notices_new (user_id, position, kind, conversation_id, seq, message_id, created_at)
SELECT user_id, position, kind, conversation_id, seq, message_id, created_at FROM stream_notices;
DROP TABLE stream_notices;
ALTER TABLE stream_notices_new RENAME TO stream_notices;
-- A user's joinings and leavings, by group and in stream order (as in migration 0005, now
-- naming the kinds it holds, since read and updated notices are both left out).
CREATE INDEX stream_notices_membership ON stream_notices (user_id, conversation_id, position, kind, seq)
    WHERE kind IN ('joined', 'left');
