//! The HTTP side of the server: actix-web handlers for every route of API.md, the auth
//! extractor (cookie or Bearer), the error envelope, request limits, CORS, security headers,
//! health probes, the `/ws` upgrade, the mounting of `/socket.io/` and the built-in web
//! client.
//!
//! Wire types live here (and, for events, in `chat_websocket::wire`). Handlers call the
//! application's services; they never touch a repository or a driver.

mod auth;
mod connections;
mod dto;
mod error;
mod limits;
pub mod metrics;
pub mod openapi;
mod origin;
mod routes;
mod state;
mod web;

pub use connections::{connection_budget, ConnectionLimiter};
pub use error::ApiError;
pub use limits::{client_ip, LimitSettings, RateLimits};
pub use metrics::{CountingNotifier, Metrics};
pub use routes::app;
pub use state::{AppState, CookieSettings, HttpSettings, SameSite};
