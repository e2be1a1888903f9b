//! Relational storage on sqlx: SQLite (embedded, the default) and PostgreSQL.
//!
//! Both engines run the same SQL text for almost every repository port (the statements use
//! only what the two share: `$n` parameters, `ON CONFLICT`, `LIMIT`), so the port
//! implementations are written once in `repositories` and `groups` and instantiated for
//! each store. What each engine does its own way lives in its module: a send (PostgreSQL: one
//! statement; SQLite: one writer task committing sends in batches) and the few statements
//! that take a list of ids (an array, a JSON array). Schemas differ only in column types and
//! live in one migrations folder per engine.
//!
//! This crate implements the application's ports; it must not know about HTTP or sockets.

mod changes;
mod error;
mod groups;
mod postgres;
mod repositories;
mod rows;
mod sqlite;

pub use postgres::{PgOptions, PgStore};
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};
