//! Everything the handlers share, registered once as `web::Data<AppState>`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use application::ports::HealthCheck;
use application::{AccountService, GroupService, MessageChangeService, MessagingService, RealtimeService};
use chat_realtime::{ConnectionRegistry, Handshake};
use futures_util::future::LocalBoxFuture;

use crate::limits::RateLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// Adds `Secure`: the cookie then travels over HTTPS only.
    pub secure: bool,
    pub same_site: SameSite,
    /// The cookie's `Max-Age`, normally the token's lifetime.
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub cookie: CookieSettings,
    /// Largest request body accepted, in bytes (413 above it).
    pub body_limit: usize,
    /// Time a request body has to arrive in full (408 and the connection closed after it).
    pub body_timeout: Duration,
    /// Origins allowed to call the API from a browser, with credentials. Empty: none.
    pub cors_origins: Vec<String>,
    /// How long `/readyz` waits for each dependency.
    pub readiness_timeout: Duration,
    /// Serves the built-in web client at `/`.
    pub web_client: bool,
    /// Serves Prometheus metrics at `/metrics` (off: 404). The endpoint is unauthenticated:
    /// restrict it at the proxy (deploy/nginx.conf) or switch it off.
    pub metrics: bool,
}

pub struct AppState {
    pub accounts: Arc<AccountService>,
    pub messaging: Arc<MessagingService>,
    pub changes: Arc<MessageChangeService>,
    pub groups: Arc<GroupService>,
    pub realtime: Arc<RealtimeService>,
    pub registry: Arc<ConnectionRegistry>,
    pub limits: Arc<RateLimits>,
    /// Served at `/metrics`; shared by every worker.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The socket endpoints, shared by every worker.
    pub transports: Transports,
    /// Every dependency `/readyz` must hear from, by name.
    pub health: Vec<(&'static str, Arc<dyn HealthCheck>)>,
    pub settings: HttpSettings,
}

/// The socket transports, plugged in by the composition root so that this adapter does not
/// depend on them: it authenticates `/ws` handshakes (with the API's error answers) and
/// leaves the rest to the transport.
pub struct Transports {
    pub ws: ServeWs,
    pub socketio: MountSocketIo,
}

/// Serves an authenticated `/ws` handshake: upgrades the request and runs the connection.
pub type ServeWs = Box<
    dyn Fn(
            HttpRequest,
            web::Payload,
            Handshake,
        ) -> LocalBoxFuture<'static, Result<HttpResponse, actix_web::Error>>
        + Send
        + Sync,
>;

/// Mounts the `/socket.io/` endpoint, which answers every request under it itself.
pub type MountSocketIo = Box<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;
