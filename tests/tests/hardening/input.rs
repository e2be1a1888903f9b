//! Limits on input: body size, nesting, page size, frame size.

use super::*;

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn(|s| s.http.body_limit = 2048).await;
    let api = app.api();
    let body = json!({ "fullName": "x".repeat(4096), "username": unique("big"), "password": PASSWORD });
    api.post_json("/api/v1/user/register", &body, None)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE");
    // Without a Content-Length (chunked), the limit holds as well.
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut request = String::from(
        "POST /api/v1/user/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..8 {
        request.push_str(&format!("400\r\n{}\r\n", " ".repeat(1024)));
    }
    request.push_str("0\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("PAYLOAD_TOO_LARGE"), "{response}");
}

#[tokio::test]
async fn deeply_nested_json_is_400_and_the_server_keeps_answering() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    for path in ["/api/v1/user/register", "/api/v1/user/login"] {
        let reply = api
            .execute(
                api.request(Method::POST, path, None)
                    .header(CONTENT_TYPE, "application/json")
                    .body("[".repeat(10_000)),
            )
            .await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        let nested = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        let reply = api
            .execute(
                api.request(Method::POST, path, None).header(CONTENT_TYPE, "application/json").body(nested),
            )
            .await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    api.get("/healthz", None).await.data(StatusCode::OK);
}

#[tokio::test]
async fn a_huge_page_size_is_capped_at_200() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let sends = (0..8).map(|task| {
        let (api, alice, bob) = (api.clone(), alice.clone(), bob.clone());
        tokio::spawn(async move {
            for i in 0..26 {
                api.send(&alice.token, &bob.id, &format!("{task}-{i}")).await.data(StatusCode::CREATED);
            }
        })
    });
    for send in futures_util::future::join_all(sends).await {
        send.unwrap();
    }
    let reply =
        api.get(&format!("/api/v1/message/get-messages/{}?limit=100000", bob.id), Some(&alice.token)).await;
    let messages = reply.data(StatusCode::OK)["messages"].as_array().expect("messages").len();
    assert_eq!(messages, 200, "208 stored, limit=100000 asked");
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_the_socket_with_a_reason() {
    let app = spawn(|s| s.websocket.max_frame_bytes = 1024).await;
    let api = app.api();
    let user = api.create_user(&unique("big_frames")).await;
    let mut ws = api.connect_ws(&user.token).await;
    let frame = json!({ "event": "typing", "data": { "to": "x".repeat(4096), "isTyping": true } });
    let _ = ws.stream.send(Frame::text(frame.to_string())).await;
    let (code, reason) = ws.close_frame(WAIT).await;
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(!reason.is_empty(), "the close frame says why");
    // The server, and the same user's new sockets, are fine.
    api.get("/healthz", None).await.data(StatusCode::OK);
    let _again = api.connect_ws(&user.token).await;
}
