//! Browsers: security headers, CORS, cookies.

use super::*;

#[tokio::test]
async fn responses_carry_the_security_headers() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("headers")).await;
    let replies = [
        api.get("/healthz", None).await,
        api.get("/api/v1/user/get-profile", Some(&user.token)).await,
        api.get("/api/v1/user/get-profile", None).await,
        api.get("/no/such/route", None).await,
    ];
    for reply in &replies {
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{reply:?}");
        assert_eq!(reply.header("x-frame-options"), Some("DENY"), "{reply:?}");
        assert_eq!(reply.header("referrer-policy"), Some("no-referrer"), "{reply:?}");
    }
}

async fn preflight(api: &Api, origin: &str) -> Reply {
    api.execute(
        api.request(Method::OPTIONS, "/api/v1/user/login", None)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type"),
    )
    .await
}

#[tokio::test]
async fn cors_is_closed_unless_an_origin_is_configured() {
    let closed = spawn(|_| {}).await;
    let reply = preflight(&closed.api(), "https://evil.example").await;
    assert!(reply.header("access-control-allow-origin").is_none(), "{reply:?}");
    let reply = closed
        .api()
        .execute(closed.api().request(Method::GET, "/healthz", None).header("origin", "https://evil.example"))
        .await;
    assert!(reply.header("access-control-allow-origin").is_none(), "{reply:?}");

    let open = spawn(|s| s.cors.allowed_origins = vec!["https://app.example".into()]).await;
    let api = open.api();
    let reply = preflight(&api, "https://app.example").await;
    assert!(reply.status.is_success(), "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    let reply =
        api.execute(api.request(Method::GET, "/healthz", None).header("origin", "https://app.example")).await;
    assert_eq!(reply.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(reply.header("access-control-allow-credentials"), Some("true"));
    // Other origins still get nothing.
    let reply = preflight(&api, "https://evil.example").await;
    assert!(reply.header("access-control-allow-origin").is_none(), "{reply:?}");
}

fn cookie_attributes(cookie: &str) -> Vec<String> {
    cookie.split(';').skip(1).map(|a| a.trim().to_ascii_lowercase()).collect()
}

#[tokio::test]
async fn the_production_cookie_is_secure() {
    let app = spawn(|s| {
        s.cookie.secure = true;
        s.cookie.same_site = SameSite::None;
    })
    .await;
    let reply = app.api().register_user(&unique("prod")).await;
    reply.data(StatusCode::CREATED);
    let attributes = cookie_attributes(reply.token_cookie());
    for expected in ["secure", "httponly", "samesite=none", "path=/"] {
        assert!(attributes.iter().any(|a| a == expected), "{expected} missing: {attributes:?}");
    }

    // Cross-site cookies are Secure even if `cookie.secure` was forgotten.
    let app = spawn(|s| s.cookie.same_site = SameSite::None).await;
    let reply = app.api().register_user(&unique("crosssite")).await;
    let attributes = cookie_attributes(reply.token_cookie());
    assert!(attributes.iter().any(|a| a == "secure"), "{attributes:?}");

    // The production profile turns it on by itself.
    let production = Settings::load_from(&tests::workspace_dir().join("config"), Environment::Production);
    assert!(production.is_err(), "production needs a secret");
    let text = std::fs::read_to_string(tests::workspace_dir().join("config/production.toml")).unwrap();
    assert!(text.contains("secure = true"), "config/production.toml sets cookie.secure");
}
