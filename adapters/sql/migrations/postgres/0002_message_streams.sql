-- Each user's message stream: every message they sent or received gets the next position
-- (1, 2, 3, ...) in the sender's and in the receiver's stream, assigned inside the message's
-- own transaction by incrementing the user's row in stream_heads. That row stays locked
-- until the transaction ends, so the transaction holding position n+1 can only commit after
-- the one holding n did: readers never see a later position before an earlier one.
-- A sender's optional client message id makes a retried send idempotent.
ALTER TABLE messages ADD COLUMN client_message_id TEXT COLLATE "C";
ALTER TABLE messages ADD COLUMN sender_position BIGINT;
ALTER TABLE messages ADD COLUMN receiver_position BIGINT;

CREATE TABLE stream_heads (
    user_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES users (id),
    position BIGINT NOT NULL
);

-- Messages stored before streams existed take positions in id (creation) order.
WITH entries AS (
    SELECT id, sender_id AS user_id, TRUE AS sent FROM messages
    UNION ALL
    SELECT id, receiver_id AS user_id, FALSE AS sent FROM messages
), numbered AS (
    SELECT id, sent, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) AS position
    FROM entries
)
UPDATE messages m SET
    sender_position = s.position,
    receiver_position = r.position
FROM numbered s, numbered r
WHERE s.id = m.id AND s.sent AND r.id = m.id AND NOT r.sent;

INSERT INTO stream_heads (user_id, position)
SELECT user_id, MAX(position) FROM (
    SELECT sender_id AS user_id, sender_position AS position FROM messages
    UNION ALL
    SELECT receiver_id, receiver_position FROM messages
) AS positions
GROUP BY user_id;

ALTER TABLE messages ALTER COLUMN sender_position SET NOT NULL;
ALTER TABLE messages ALTER COLUMN receiver_position SET NOT NULL;
CREATE UNIQUE INDEX messages_sender_stream ON messages (sender_id, sender_position);
CREATE UNIQUE INDEX messages_receiver_stream ON messages (receiver_id, receiver_position);
CREATE UNIQUE INDEX messages_client_id ON messages (sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
