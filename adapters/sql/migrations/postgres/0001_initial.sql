-- Ids and lower-cased usernames compare byte-wise (COLLATE "C") so that ordering and
-- cursors agree with every other backend, whatever the database's locale.
CREATE TABLE users (
    id              TEXT COLLATE "C" PRIMARY KEY,
    username        TEXT NOT NULL,
    username_lower  TEXT COLLATE "C" NOT NULL,
    full_name       TEXT NOT NULL,
    full_name_lower TEXT NOT NULL,
    gender          TEXT,
    avatar          TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX users_username_lower ON users (username_lower);

CREATE TABLE conversations (
    id            TEXT COLLATE "C" PRIMARY KEY,
    participant_a TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    participant_b TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    CHECK (participant_a < participant_b)
);
CREATE UNIQUE INDEX conversations_pair ON conversations (participant_a, participant_b);
CREATE INDEX conversations_b ON conversations (participant_b);

CREATE TABLE messages (
    id              TEXT COLLATE "C" PRIMARY KEY,
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    sender_id       TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    receiver_id     TEXT COLLATE "C" NOT NULL REFERENCES users (id),
    body            TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX messages_conversation_id ON messages (conversation_id, id);

CREATE TABLE revoked_tokens (
    token_id   TEXT COLLATE "C" PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);
