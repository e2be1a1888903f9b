//! The built-in web client: a small single-page app served at `/` (and at `/chat/{id}` and
//! `/group/{id}`, the addresses of a chat with a person and of a group in it), its files
//! compiled into the binary so that the server needs nothing beside it on disk.
//!
//! Mounted by [`crate::app`] only when `HttpSettings::web_client` is on; an API-only
//! deployment turns it off and `/` then answers the 404 envelope like any unknown path.

use actix_web::body::MessageBody;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{guard, web, HttpRequest, HttpResponse, ResponseError as _};

use crate::error::ApiError;

/// Forbids inline script and style, and any origin but ours except for avatar images a user
/// chose, which are https URLs elsewhere (default avatars are the server's own).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' https: data:; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX: Asset = Asset {
    path: "/",
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};

/// The page's own addresses besides `/`: each conversation has one (a person's id for a
/// direct chat, the conversation's id for a group), so that Back, reload and links work; the
/// page reads the path itself.
const PAGE_ROUTES: &[&str] = &["/chat/{id}", "/group/{id}"];

const ASSETS: &[Asset] = &[
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/app.css"),
    },
    Asset {
        path: "/assets/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/icon.svg"),
    },
];

/// Registers the page and its assets.
pub fn configure(config: &mut web::ServiceConfig) {
    for path in std::iter::once(INDEX.path).chain(PAGE_ROUTES.iter().copied()) {
        config.service(
            resource(path).route(readable().to(|req: HttpRequest| async move { serve(&req, &INDEX) })),
        );
    }
    for asset in ASSETS {
        config.service(
            resource(asset.path)
                .route(readable().to(move |req: HttpRequest| async move { serve(&req, asset) })),
        );
    }
}

/// A resource that answers other methods with the envelope rather than a bare 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async { ApiError::method_not_allowed().error_response() }))
}

/// GET, and HEAD (answered with the same headers and no body).
fn readable() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

fn serve(req: &HttpRequest, asset: &Asset) -> HttpResponse {
    // The file names carry no version, so browsers keep copies but ask before each use; the
    // ETag makes that question a 304 without a body until the binary changes.
    validated(req, asset.body, asset.content_type, "no-cache", CONTENT_SECURITY_POLICY)
}

/// `body` with a strong validator of it (`ETag`), or a 304 without the body when the
/// request's `If-None-Match` names that validator (or `*`); either way with `cache_control`
/// and the content security policy `csp`.
pub(crate) fn validated<B>(
    req: &HttpRequest,
    body: B,
    content_type: &'static str,
    cache_control: &'static str,
    csp: &'static str,
) -> HttpResponse
where
    B: AsRef<[u8]> + MessageBody + 'static,
{
    let etag = etag(body.as_ref());
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache_control))
        .insert_header((header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp)));
    if fresh {
        response.finish()
    } else {
        response.content_type(content_type).body(body)
    }
}

/// A strong validator from the content: FNV-1a over the bytes, enough to tell builds apart.
fn etag(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_no_inline_script_or_style() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains("<style"), "inline style");
        assert!(!html.contains("style="), "inline style attribute");
        let handler = html.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handler: on{}", handler.unwrap_or_default());
    }

    #[test]
    fn every_asset_the_page_names_is_served() {
        let html = std::str::from_utf8(INDEX.body).unwrap();
        for path in ["/assets/app.js", "/assets/app.css", "/assets/icon.svg"] {
            assert!(html.contains(path), "{path} not linked");
            assert!(ASSETS.iter().any(|a| a.path == path), "{path} not served");
        }
    }

    #[test]
    fn etags_differ_when_content_differs() {
        assert_ne!(etag(b"a"), etag(b"b"));
        assert_eq!(etag(b"a"), etag(b"a"));
    }
}
