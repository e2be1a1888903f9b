CREATE TABLE users (
    id              TEXT PRIMARY KEY NOT NULL,
    username        TEXT NOT NULL,
    username_lower  TEXT NOT NULL,
    full_name       TEXT NOT NULL,
    full_name_lower TEXT NOT NULL,
    gender          TEXT,
    avatar          TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE UNIQUE INDEX users_username_lower ON users (username_lower);

CREATE TABLE conversations (
    id            TEXT PRIMARY KEY NOT NULL,
    participant_a TEXT NOT NULL REFERENCES users (id),
    participant_b TEXT NOT NULL REFERENCES users (id),
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    CHECK (participant_a < participant_b)
);
CREATE UNIQUE INDEX conversations_pair ON conversations (participant_a, participant_b);
CREATE INDEX conversations_b ON conversations (participant_b);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    sender_id       TEXT NOT NULL REFERENCES users (id),
    receiver_id     TEXT NOT NULL REFERENCES users (id),
    body            TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX messages_conversation_id ON messages (conversation_id, id);

CREATE TABLE revoked_tokens (
    token_id   TEXT PRIMARY KEY NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);
