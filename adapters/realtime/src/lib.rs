//! Live delivery to connected clients, whatever the transport: the layer between the
//! `application` core and the transports (`chat-websocket`, `chat-socketio`) and the
//! fan-out across instances (`chat-redis`), which all build on it.
//!
//! [`ConnectionRegistry`] maps each user to their open connections and queues encoded
//! events on each connection's own bounded channel; [`GroupMembers`] remembers who is in
//! each group, and [`Delivery`] puts the two together: it delivers an event to users, to a
//! group's members or to everyone on this instance, and is the single-instance `Notifier`.
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
mod delivery;
mod dispatched;
pub mod follow;
pub mod handshake;
mod healing;
mod hub;
mod members;
mod presence;
mod queue;
mod registry;
pub mod wire;

pub use budget::FrameBudget;
pub use delivery::Delivery;
pub use dispatched::DispatchMark;
pub use follow::{log_stop, starts_over, stop_reason, Follow};
pub use healing::{CatchUp, Healing, StreamCheck, StreamPosition, HEALING_READERS};
pub use hub::{Handshake, Hub, InvalidEvent, Live, Refused};
pub use members::{GroupMembers, Members};
pub use presence::InMemoryPresence;
pub use queue::{queue, QueueSender, Receiver as QueueReceiver, TryRecvError, TrySendError};
pub use registry::{
    ConnectionGuard, ConnectionRegistry, Ended, Outbound, Queued, Receiver, Refusal, SessionToken, Streamed,
};
