//! The native WebSocket endpoint (`/ws`) on actix-ws: JSON text frames
//! `{"event": name, "data": payload}`, one task per connection.
//!
//! Everything but the framing is the realtime layer's (`chat_realtime::Hub`): the HTTP
//! adapter authenticates the handshake and hands it to [`serve`]. This crate must not import
//! storage, the HTTP adapter or another transport.

pub mod session;

pub use session::{serve, WsSettings};
