-- Each user's message stream: every message they sent or received gets the next position
-- (1, 2, 3, ...) in the sender's and in the receiver's stream, assigned inside the message's
-- own transaction from the user's row in stream_heads. SQLite runs one write transaction at
-- a time, so positions are committed in order and readers never see a later one first.
-- A sender's optional client message id makes a retried send idempotent.
ALTER TABLE messages ADD COLUMN client_message_id TEXT;
ALTER TABLE messages ADD COLUMN sender_position INTEGER;
ALTER TABLE messages ADD COLUMN receiver_position INTEGER;

CREATE TABLE stream_heads (
    user_id  TEXT PRIMARY KEY NOT NULL REFERENCES users (id),
    position INTEGER NOT NULL
);

-- Messages stored before streams existed take positions in id (creation) order.
WITH entries AS (
    SELECT id, sender_id AS user_id, 1 AS sent FROM messages
    UNION ALL
    SELECT id, receiver_id AS user_id, 0 AS sent FROM messages
), numbered AS (
    SELECT id, user_id, sent, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) AS position
    FROM entries
)
UPDATE messages SET
    sender_position = (SELECT position FROM numbered n WHERE n.id = messages.id AND n.sent = 1),
    receiver_position = (SELECT position FROM numbered n WHERE n.id = messages.id AND n.sent = 0);

INSERT INTO stream_heads (user_id, position)
SELECT user_id, MAX(position) FROM (
    SELECT sender_id AS user_id, sender_position AS position FROM messages
    UNION ALL
    SELECT receiver_id, receiver_position FROM messages
) AS positions
GROUP BY user_id;

CREATE UNIQUE INDEX messages_sender_stream ON messages (sender_id, sender_position);
CREATE UNIQUE INDEX messages_receiver_stream ON messages (receiver_id, receiver_position);
CREATE UNIQUE INDEX messages_client_id ON messages (sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
