use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;
use tests::PASSWORD;

#[tokio::test]
async fn malformed_json_is_a_validation_error() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bodies = ["{\"username\":", "not json at all", "{\"username\": \"ada\",}", "", "\u{0}"];
    for body in bodies {
        for path in ["/api/v1/user/register", "/api/v1/user/login"] {
            let request = app.client.post(app.url(path)).header(CONTENT_TYPE, "application/json").body(body);
            let response = app.execute(request).await;
            response.error(StatusCode::BAD_REQUEST, "VALIDATION");
        }
        let request = app
            .request(reqwest::Method::POST, &format!("/api/v1/message/send/{}", ada.id), Some(&ada.token))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        app.execute(request).await.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
}

#[tokio::test]
async fn a_body_without_a_json_content_type_is_415_and_nothing_is_done() {
    let app = spawn_app().await;
    let body = json!({ "fullName": "Ada", "username": "ada", "password": PASSWORD }).to_string();

    // What an HTML form on another site could send: never acted on (docs/SECURITY.md).
    let response = app.execute(app.client.post(app.url("/api/v1/user/register")).body(body.clone())).await;
    response.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");

    // The same body labelled as JSON registers: the name was still free.
    let labelled = app.client.post(app.url("/api/v1/user/register")).header(CONTENT_TYPE, "application/json");
    app.execute(labelled.body(body)).await.data(StatusCode::CREATED);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let huge = "x".repeat(70 * 1024);

    let register = app.register(&json!({ "fullName": huge, "username": "big", "password": PASSWORD })).await;
    register.error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");

    let send = app.send(&ada.token, &bob.id, &huge).await;
    send.error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");

    // Nothing was stored.
    let history = app.get_messages(&ada.token, &bob.id, &[]).await;
    assert_eq!(history.data(StatusCode::OK)["messages"], json!([]));
}

#[tokio::test]
async fn odd_input_is_never_a_server_error() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let long_id = "a".repeat(5000);
    let paths = [
        format!("/api/v1/message/get-messages/{long_id}"),
        "/api/v1/message/get-messages/%00".to_owned(),
        "/api/v1/message/get-messages/'%20OR%201=1--".to_owned(),
        "/api/v1/message/get-messages/%7B%22%24gt%22%3A%22%22%7D".to_owned(),
        "/api/v1/user/get-other-users?search=%27%20OR%201%3D1--".to_owned(),
        "/api/v1/user/get-other-users?search=%00".to_owned(),
        "/api/v1/user/get-other-users?search=a%00b".to_owned(),
        "/api/v1/user/get-other-users?cursor=%00".to_owned(),
        "/api/v1/user/get-other-users?limit=99999999999999999999".to_owned(),
        "/api/v1/user/get-other-users?limit=0".to_owned(),
        format!("/api/v1/message/get-messages/{}?before=%27--", ada.id),
        format!("/api/v1/message/get-messages/{}?limit=1e3", ada.id),
    ];
    for path in paths {
        let response = app.get(&path, Some(&ada.token)).await;
        assert!(
            response.status.is_client_error() || response.status.is_success(),
            "{path}: {}",
            response.text
        );
        if response.status.is_client_error() {
            let code = response.body["code"].as_str().unwrap_or_default().to_owned();
            response.error(response.status, &code);
        } else {
            response.data(response.status);
        }
    }
    let send = app.send(&ada.token, &long_id, "hi").await;
    send.error(StatusCode::NOT_FOUND, "NOT_FOUND");

    // A NUL byte is text no storage backend takes as is: refused, not a server error.
    let bob = app.create_user("bob").await;
    app.send(&ada.token, &bob.id, "nul \u{0} inside").await.error(StatusCode::BAD_REQUEST, "VALIDATION");
    let nul_name = app
        .register(&json!({ "fullName": "Nul \u{0} Name", "username": "nul_name", "password": PASSWORD }))
        .await;
    nul_name.error(StatusCode::BAD_REQUEST, "VALIDATION");
    let nul_avatar = app
        .register(&json!({
            "fullName": "Nul",
            "username": "nul_avatar",
            "password": PASSWORD,
            "avatar": "https://a.example/\u{0}",
        }))
        .await;
    nul_avatar.error(StatusCode::BAD_REQUEST, "VALIDATION");

    let nul_password = app
        .register(&json!({ "fullName": "Nul", "username": "nul_password", "password": "pass\u{0}word" }))
        .await;
    assert!(
        nul_password.status == StatusCode::CREATED || nul_password.status == StatusCode::BAD_REQUEST,
        "{}",
        nul_password.text
    );

    let weird_names = ["ada' OR '1'='1", "ada\u{0}", "ada\"}", "%", "_"];
    for name in weird_names {
        let login = app.login(name, PASSWORD).await;
        login.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
}

#[tokio::test]
async fn error_bodies_carry_no_internals() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let responses = [
        app.register(&json!({ "username": { "$gt": "" } })).await,
        app.get_messages(&ada.token, "' OR 1=1 --", &[("before", "x")]).await,
        app.get_messages(&ada.token, &ada.id, &[("before", "x")]).await,
        app.other_users(&ada.token, &[("limit", "x")]).await,
        app.login("ada", &"p".repeat(100)).await,
    ];
    for response in responses {
        assert!(response.status.is_client_error(), "{}", response.text);
        let text = response.text.to_ascii_lowercase();
        for internal in
            ["sqlx", "sqlite", "postgres", "select ", "insert ", "panicked", "backtrace", "src/", ".rs:"]
        {
            assert!(!text.contains(internal), "{internal:?} in {}", response.text);
        }
    }
}

#[tokio::test]
async fn responses_carry_the_security_headers() {
    let app = spawn_app().await;

    let response = app.get("/healthz", None).await;

    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(response.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_browser_on_an_unlisted_origin_gets_no_cors_grant() {
    let app = spawn_app().await;

    let response = app
        .execute(
            app.client
                .request(reqwest::Method::OPTIONS, app.url("/api/v1/user/login"))
                .header("Origin", "https://evil.example")
                .header("Access-Control-Request-Method", "POST"),
        )
        .await;

    assert!(response.header("access-control-allow-origin").is_none(), "{:?}", response.headers);
    assert!(!response.status.is_server_error());
}
