//! The Socket.IO v4 compatible endpoint at `/socket.io/` (Engine.IO protocol v4, Socket.IO
//! protocol v5), so that front ends using the stock `socket.io-client` work unchanged.
//!
//! [`packet`] holds both wire formats as pure functions; [`Engine`] keeps the sessions of
//! this instance; each session is one task that opens, serves and closes its socket through
//! the realtime layer's `chat_realtime::Hub`, as `/ws` does, so the `Notifier` port,
//! presence and the message stream treat it like a native `/ws` connection. [`service`]
//! mounts the route on an actix-web `App`.
//!
//! This crate reaches the core only through `AccountService` (the handshake's token) and the
//! `Hub`; it must not import storage, the HTTP adapter or the other transport (the client
//! address rule for the per-address limits is passed in: [`ClientAddress`]).

mod admission;
mod engine;
pub mod packet;
mod session;
mod transport;

use std::sync::Arc;

use actix_web::web;

pub use admission::SessionLimits;
pub use engine::{ClientAddress, ConnectGate, Engine, EngineSettings};

/// The `/socket.io/` route (with or without the trailing slash), every method, over `engine`.
pub fn service(engine: Arc<Engine>) -> actix_web::Scope {
    web::scope("/socket.io")
        .app_data(web::Data::from(engine))
        .service(web::resource(["", "/"]).route(web::route().to(transport::endpoint)))
}
