//! The native WebSocket endpoint (`/ws`) on actix-web: JSON text frames
//! `{"event": name, "data": payload}`, one task per connection. [`frames`] is the
//! WebSocket itself (handshake, client frames, sending), which Socket.IO's WebSocket
//! transport shares.
//!
//! Everything but the framing is the realtime layer's (`chat_realtime::Hub`): the HTTP
//! adapter authenticates the handshake and hands it to [`serve`]. This crate must not import
//! storage, the HTTP adapter or another transport.

pub mod frames;
pub mod session;

pub use session::{serve, WsSettings};
