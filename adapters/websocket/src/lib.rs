//! Live delivery to connected clients.
//!
//! [`ConnectionRegistry`] maps each user to their open connections, whatever the transport,
//! and implements the `Notifier` port by queueing encoded events on each connection's own
//! bounded channel. [`session`] serves the native WebSocket endpoint (`/ws`) on actix-ws.
//! [`InMemoryPresence`] is the single-instance `Presence`. [`wire`] holds the JSON shapes
//! events are sent in, which the HTTP adapter reuses so both speak the same objects.
//! [`auth::request_token`] reads a handshake's token the same way for every endpoint.
//! [`set_write_deadline`] drops connections whose client stops reading, even once their
//! session has ended. [`follow`] drives a connection's message stream (replay on connect, then live events
//! without gap or repeat) for every transport, and [`FrameBudget`] limits every client's
//! frame rate.
//!
//! This crate knows nothing of storage; it reaches the core only through the ports, the
//! `RealtimeService` and the `MessagingService` (for a connection's stream).

pub mod auth;
mod budget;
pub mod follow;
mod presence;
mod registry;
pub mod session;
pub mod wire;
mod write_deadline;

pub use budget::FrameBudget;
pub use follow::{Follow, Stop};
pub use presence::InMemoryPresence;
pub use registry::{ConnectionGuard, ConnectionRegistry, Ended, Outbound, Receiver, Refusal, SessionToken};
pub use session::{serve, Handshake, WsSettings};
pub use write_deadline::set_write_deadline;
