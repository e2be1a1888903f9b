//! Live delivery to connected clients, whatever the transport: the layer between the
//! `application` core and the transports (`chat-websocket`, `chat-socketio`) and the
//! fan-out across instances (`chat-redis`), which all build on it.
//!
//! [`ConnectionRegistry`] maps each user to their open connections and implements the
//! `Notifier` port by queueing encoded events on each connection's own bounded channel.
//! [`Hub`] is what every session does with the core: open a connection (its stream through
//! [`follow`], replayed on connect, then live events without gap or repeat), presence,
//! client events, close. [`wire`] holds the JSON shapes events are sent in, which the HTTP
//! adapter reuses so both speak the same objects. [`handshake`] says where a handshake's
//! token travels; [`InMemoryPresence`] is the single-instance `Presence`; [`FrameBudget`]
//! limits every client's frame rate.
//!
//! It reaches the core only through the ports and the `RealtimeService`, and must not
//! import a web framework, a transport, storage or Redis: those build on it.

mod budget;
pub mod follow;
pub mod handshake;
mod hub;
mod presence;
mod registry;
pub mod wire;

pub use budget::FrameBudget;
pub use follow::{log_stop, stop_reason, Follow};
pub use hub::{Handshake, Hub, InvalidEvent, Live, Refused};
pub use presence::InMemoryPresence;
pub use registry::{ConnectionGuard, ConnectionRegistry, Ended, Outbound, Receiver, Refusal, SessionToken};
