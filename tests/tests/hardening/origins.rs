//! Cross-site requests: foreign origins on socket handshakes and state-changing requests,
//! and bodies an HTML form can send.

use super::*;

const EVIL: &str = "https://evil.example";

/// The status a `/ws` handshake with the user's cookie and `origin` (if any) is answered with.
async fn ws_handshake_status(api: &Api, user: &TestUser, origin: Option<&str>) -> u16 {
    handshake_status(api, "/ws", user, origin).await
}

/// The status a WebSocket handshake on `path` with the user's cookie and `origin` (if any)
/// is answered with.
async fn handshake_status(api: &Api, path: &str, user: &TestUser, origin: Option<&str>) -> u16 {
    let mut request = format!("ws://127.0.0.1:{}{path}", api.port).into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", format!("token={}", user.token).parse().unwrap());
    if let Some(origin) = origin {
        headers.insert("origin", origin.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((_, response))) => response.status().as_u16(),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => response.status().as_u16(),
        other => panic!("the handshake neither succeeded nor was refused: {other:?}"),
    }
}

#[tokio::test]
async fn a_websocket_handshake_from_a_foreign_origin_is_refused() {
    let app = spawn(|s| s.cors.allowed_origins = vec!["https://app.example".into()]).await;
    let api = app.api();
    let user = api.create_user(&unique("victim")).await;
    let own = format!("http://127.0.0.1:{}", api.port);

    assert_eq!(ws_handshake_status(&api, &user, Some(EVIL)).await, 403);
    assert_eq!(ws_handshake_status(&api, &user, Some("null")).await, 403);
    // A page on another port of the same host is another origin.
    let neighbour = format!("http://127.0.0.1:{}", api.port.wrapping_add(1));
    assert_eq!(ws_handshake_status(&api, &user, Some(&neighbour)).await, 403);

    assert_eq!(ws_handshake_status(&api, &user, Some(&own)).await, 101, "the server's own page");
    assert_eq!(ws_handshake_status(&api, &user, Some("https://app.example")).await, 101, "a listed origin");
    assert_eq!(ws_handshake_status(&api, &user, None).await, 101, "not a browser");
}

#[tokio::test]
async fn socket_io_requests_from_a_foreign_origin_are_refused() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("victim")).await;
    let own = format!("http://127.0.0.1:{}", api.port);
    let poll = |origin: &str| {
        api.client
            .get(api.url("/socket.io/?EIO=4&transport=polling"))
            .header("cookie", format!("token={}", user.token))
            .header("origin", origin.to_owned())
    };

    let refused = api.execute(poll(EVIL)).await;
    refused.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    let opened = poll(&own).send().await.unwrap();
    assert_eq!(opened.status(), StatusCode::OK, "the server's own page opens a session");

    // The WebSocket transport's handshake too, before any upgrade.
    let mut request = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket", api.port)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert("cookie", format!("token={}", user.token).parse().unwrap());
    request.headers_mut().insert("origin", EVIL.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        other => panic!("a foreign Socket.IO upgrade was not refused: {:?}", other.map(|(_, r)| r)),
    }
}

#[tokio::test]
async fn socket_paths_written_with_escapes_are_refused_from_a_foreign_origin() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("victim")).await;
    // `%77` is `w`, `%73` is `s`: the router decodes them, so these reach the socket routes
    // (a browser sends them as written).
    for path in ["/%77s?since=0", "/w%73", "/%73ocket.io/?EIO=4&transport=websocket"] {
        assert_eq!(handshake_status(&api, path, &user, Some(EVIL)).await, 403, "{path}");
    }
    assert_eq!(handshake_status(&api, "/%77s", &user, None).await, 101, "the same path, not a browser");
    let poll = api
        .client
        .get(api.url("/%73ocket.io/?EIO=4&transport=polling"))
        .header("cookie", format!("token={}", user.token))
        .header("origin", EVIL);
    api.execute(poll).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
}

#[tokio::test]
async fn a_cookie_authenticated_post_from_a_foreign_origin_is_refused() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let send = |origin: &str| {
        api.client
            .post(api.url(&format!("/api/v1/message/send/{}", bob.id)))
            .header("cookie", format!("token={}", alice.token))
            .header("origin", origin.to_owned())
            .json(&json!({ "message": "sent by another site" }))
    };

    api.execute(send(EVIL)).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    // Login and registration too (login CSRF signs the victim into the attacker's account).
    let login = api
        .client
        .post(api.url("/api/v1/user/login"))
        .header("origin", EVIL)
        .json(&json!({ "username": alice.username, "password": PASSWORD }));
    api.execute(login).await.error(StatusCode::FORBIDDEN, "FORBIDDEN");
    assert!(api.all_message_ids(&alice, &bob).await.is_empty(), "nothing was stored");

    let own = format!("http://127.0.0.1:{}", api.port);
    api.execute(send(&own)).await.data(StatusCode::CREATED);
    // Reads stay readable to anyone allowed by CORS; a foreign page can't read the answer.
    let read =
        api.request(Method::GET, "/api/v1/user/get-profile", Some(&alice.token)).header("origin", EVIL);
    api.execute(read).await.data(StatusCode::OK);
}

#[tokio::test]
async fn bodies_an_html_form_can_send_are_refused() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let name = unique("formed");
    let registration =
        json!({ "fullName": "Form TestUser", "username": name, "password": PASSWORD }).to_string();
    let message = json!({ "message": "from a form" }).to_string();

    for content_type in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let with_type = |request: reqwest::RequestBuilder| match content_type {
            Some(value) => request.header(CONTENT_TYPE, value),
            None => request,
        };
        let register =
            with_type(api.client.post(api.url("/api/v1/user/register"))).body(registration.clone());
        api.execute(register).await.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
        let send = with_type(api.request(
            Method::POST,
            &format!("/api/v1/message/send/{}", bob.id),
            Some(&alice.token),
        ))
        .body(message.clone());
        api.execute(send).await.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE");
    }
    api.login(&name, PASSWORD).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    assert!(api.all_message_ids(&alice, &bob).await.is_empty(), "nothing was stored");

    // JSON, with or without a charset or a +json type, is what the API takes.
    for content_type in ["application/json", "application/json; charset=utf-8", "application/vnd.chat+json"] {
        let send = api
            .request(Method::POST, &format!("/api/v1/message/send/{}", bob.id), Some(&alice.token))
            .header(CONTENT_TYPE, content_type)
            .body(message.clone());
        api.execute(send).await.data(StatusCode::CREATED);
    }
}
