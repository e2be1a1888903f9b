//! Cross-site request refusal.
//!
//! Browsers attach the `token` cookie to requests that other sites make them send: a form
//! post, a `fetch` without CORS, and a WebSocket handshake, which CORS does not cover at
//! all. Such requests carry the page's `Origin`. A request that could act as the user or
//! open their event stream (any method but GET/HEAD/OPTIONS, and every handshake or poll of
//! `/ws` and `/socket.io/`) is refused with `403 FORBIDDEN` when its `Origin` is neither
//! the server's own (the authority in `Host`) nor one of `cors.allowed_origins`. Requests
//! without `Origin` (curl, mobile apps, servers) are not browsers acting for someone else
//! and pass.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::web;

use crate::error::ApiError;

/// The origins allowed besides the server's own.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Lower-cased `scheme://host[:port]`, without a trailing slash.
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn new(allowed: &[String]) -> Self {
        Self { allowed: allowed.iter().map(|o| normalize(o)).collect() }
    }

    /// Whether a request from `origin` to a server reached as `host` may proceed.
    fn permits(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = normalize(origin);
        if self.allowed.contains(&origin) {
            return true;
        }
        // Same origin: the page was served by this server under the name it was reached by.
        // The scheme is not compared: behind a TLS-terminating proxy the server sees plain
        // HTTP for pages the browser loaded over HTTPS.
        let authority = match origin.split_once("://") {
            Some(("http" | "https", authority)) => authority,
            _ => return false,
        };
        host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
    }
}

fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Requests that act as the user or open their live stream.
fn guarded(req: &ServiceRequest) -> bool {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    // The path as the router matches it, percent-escapes decoded: `/%77s` reaches `/ws`.
    let path = req.match_info().as_str();
    !safe || path == "/ws" || path.starts_with("/socket.io") || is_websocket_upgrade(req)
}

/// Any WebSocket handshake, whatever its path: none is a request a foreign page may make.
fn is_websocket_upgrade(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Middleware: refuses guarded requests from foreign origins before any handler (and any
/// WebSocket upgrade) sees them.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if guarded(&req) {
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let policy = req.app_data::<web::Data<OriginPolicy>>();
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
            let permitted = match (origin.to_str(), policy) {
                (Ok(origin), Some(policy)) => policy.permits(origin, host),
                _ => false,
            };
            if !permitted {
                let refusal = ApiError::forbidden(
                    "requests from this origin are not allowed; add it to cors.allowed_origins",
                );
                return Ok(req.error_response(refusal).map_into_right_body());
            }
        }
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_origin_is_permitted_whatever_the_scheme() {
        let policy = OriginPolicy::default();
        assert!(policy.permits("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(policy.permits("https://Chat.Example.com", Some("chat.example.com")));
        assert!(!policy.permits("http://127.0.0.1:8081", Some("127.0.0.1:8080")));
        assert!(!policy.permits("http://chat.example.com.evil.example", Some("chat.example.com")));
        assert!(!policy.permits("http://127.0.0.1:8080", None));
    }

    #[test]
    fn listed_origins_are_permitted_and_others_are_not() {
        let policy = OriginPolicy::new(&["https://app.example.com/".to_owned()]);
        assert!(policy.permits("https://app.example.com", Some("api.example.com")));
        assert!(policy.permits("HTTPS://APP.EXAMPLE.COM", Some("api.example.com")));
        assert!(!policy.permits("http://app.example.com", Some("api.example.com")));
        assert!(!policy.permits("https://evil.example", Some("api.example.com")));
    }

    #[test]
    fn socket_paths_are_guarded_however_they_are_escaped() {
        use actix_web::test::TestRequest;
        for uri in ["/ws", "/%77s", "/w%73?since=0", "/socket.io/?EIO=4", "/%73ocket.io/", "/socket%2Eio"] {
            assert!(guarded(&TestRequest::get().uri(uri).to_srv_request()), "{uri}");
        }
        let upgrade = TestRequest::get().uri("/anywhere").insert_header((header::UPGRADE, "WebSocket"));
        assert!(guarded(&upgrade.to_srv_request()), "a WebSocket handshake on any path");
        for uri in ["/api/v1/user/get-profile", "/wsx", "/api-docs/"] {
            assert!(!guarded(&TestRequest::get().uri(uri).to_srv_request()), "{uri}");
        }
        assert!(guarded(&TestRequest::post().uri("/api/v1/user/login").to_srv_request()));
    }

    #[test]
    fn opaque_and_odd_origins_are_foreign() {
        let policy = OriginPolicy::default();
        for origin in ["null", "file://", "chrome-extension://abc", "", "127.0.0.1:8080"] {
            assert!(!policy.permits(origin, Some("127.0.0.1:8080")), "{origin}");
        }
    }
}
