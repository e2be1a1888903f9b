//! Live delivery to connected clients.
//!
//! [`ConnectionRegistry`] maps each user to their open connections, whatever the transport,
//! and implements the `Notifier` port by queueing encoded events on each connection's own
//! bounded channel. [`session`] serves the native WebSocket endpoint (`/ws`) on actix-ws.
//! [`InMemoryPresence`] is the single-instance `Presence`. [`wire`] holds the JSON shapes
//! events are sent in, which the HTTP adapter reuses so both speak the same objects.
//! [`auth::request_token`] reads a handshake's token the same way for every endpoint.
//!
//! This crate knows nothing of storage; it reaches the core only through the ports and
//! the `RealtimeService`.

pub mod auth;
mod presence;
mod registry;
pub mod session;
pub mod wire;

pub use presence::InMemoryPresence;
pub use registry::{ConnectionGuard, ConnectionRegistry, Outbound, Receiver, Refusal};
pub use session::{serve, WsSettings};
