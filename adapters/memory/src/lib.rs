//! The reference store: every repository port over plain maps in this process's memory.
//!
//! It holds the ports' contracts exactly as the databases do (the same storage contract
//! suite runs on it), in the simplest code that can: so it is what a behaviour of the ports
//! means when a database adapter is in doubt, a store for state-based use-case tests, and
//! `storage.backend = "memory"` for demos. It is not durable (everything is gone when the
//! process ends, whatever `MessageRepository::append` promises) and serves one instance
//! only. Listings scan where the databases read an index: fine for demos and tests, not
//! for load.
//!
//! Each concern has its own state behind its own lock, taken for one synchronous step and
//! never held across an `await`: users (`users`), conversations of both kinds with their
//! members, entries and streams, which a send, a read or a group change moves together
//! (`chats`), and revocations (`revocations`). One step under one lock is what makes a step
//! atomic here, as a transaction is in a database: concurrent sends take stream positions
//! and a conversation's seqs one after the other, so neither has holes, racing sends with
//! one client id store one message, and a send after a member's removal finds them gone.
//!
//! This crate implements the application's ports; it must not know about HTTP, sockets or
//! other stores.

mod chats;
mod revocations;
mod users;

use std::sync::{Mutex, MutexGuard, PoisonError};

use application::ports::{HealthCheck, RepoResult};
use async_trait::async_trait;

/// Every repository port in memory; see the crate documentation.
#[derive(Default)]
pub struct MemoryStore {
    users: Mutex<users::Users>,
    chats: Mutex<chats::Chats>,
    revoked: Mutex<revocations::Revocations>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Takes one of the store's locks. Every step checks all it needs before it writes, and its
/// writes (map insertions) do not panic, so a step that panicked (a bug) changed nothing:
/// the state behind a poisoned lock is whole, and the store carries on with it.
fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl HealthCheck for MemoryStore {
    /// Always answers: there is nothing to reach.
    async fn ping(&self) -> RepoResult<()> {
        Ok(())
    }
}
