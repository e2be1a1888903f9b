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
--   an `updated` notice naming the change's seq and its message.
--
-- Adding nullable columns without a default rewrites no row.

ALTER TABLE messages
    ADD COLUMN reply_to TEXT COLLATE "C",
    ADD COLUMN version BIGINT,
    ADD COLUMN edited_at TIMESTAMPTZ,
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN deleted_by TEXT COLLATE "C",
    ADD COLUMN reactions TEXT;

-- The deleted messages of a conversation by seq: what the conversation list subtracts from
-- the unread count.
CREATE INDEX messages_deleted ON messages (conversation_id, seq) WHERE deleted_at IS NOT NULL;

CREATE TABLE message_changes (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL,
    message_id      TEXT COLLATE "C" NOT NULL REFERENCES messages (id),
    actor_id        TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    kind            TEXT NOT NULL CHECK (kind IN ('edited', 'deleted', 'reactionAdded', 'reactionRemoved')),
    emoji           TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    CHECK ((kind IN ('reactionAdded', 'reactionRemoved')) = (emoji IS NOT NULL))
);

ALTER TABLE stream_notices
    DROP CONSTRAINT stream_notices_kind_check,
    DROP CONSTRAINT stream_notices_check,
    ADD CONSTRAINT stream_notices_kind_check CHECK (kind IN ('joined', 'left', 'read', 'updated')),
    ADD CONSTRAINT stream_notices_message_check CHECK ((kind IN ('read', 'updated')) = (message_id IS NOT NULL));
-- A user's joinings and leavings, by group and in stream order (as in migration 0004, now
-- naming the kinds it holds, since read and updated notices are both left out).
DROP INDEX stream_notices_membership;
CREATE INDEX stream_notices_membership ON stream_notices (user_id, conversation_id, position)
    INCLUDE (kind, seq) WHERE kind IN ('joined', 'left');
