//! The HTTP side of the server: actix-web handlers for every route of API.md, the auth
//! extractor (cookie or Bearer), the error envelope, request limits, CORS, security headers,
//! health probes, the authentication of `/ws` handshakes, the built-in web client, and the
//! connections' own limits (per-address cap, body and write deadlines).
//!
//! Wire types live here (and, for events, in `chat_realtime::wire`). Handlers call the
//! application's services; they never touch a repository or a driver. The socket transports
//! are plugged in by the composition root ([`Transports`]): this crate does not depend on them.

mod auth;
mod connections;
mod dto;
mod error;
mod limits;
pub mod metrics;
pub mod openapi;
mod origin;
mod routes;
mod server;
mod state;
mod upgraded;
mod web;
mod write_deadline;

pub use connections::connection_budget;
pub use error::ApiError;
pub use limits::{client_ip, LimitSettings, RateLimits};
pub use metrics::{CountingNotifier, Metrics};
pub use routes::app;
pub use server::{serve, Listening, ServerSettings, UpgradedSockets};
pub use state::{AppState, CookieSettings, HttpSettings, SameSite, Transports};
