//! The server from the outside: real HTTP and WebSocket clients against a server on a free
//! port, over a fresh database of the backend named by `CHAT_TEST_BACKEND`.

// The spawned futures of the concurrency tests nest deeply enough to need more than the
// default 128 to lay them out.
#![recursion_limit = "256"]

mod changes;
mod concurrency;
mod errors;
mod groups;
mod health;
mod helpers;
mod idempotency;
mod message_stream;
mod messages;
mod users;
mod websocket;
mod ws_groups;
