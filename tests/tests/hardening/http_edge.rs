//! The HTTP edge: metric labels, slow bodies, connection caps, tokens of unknown users.

use super::*;

/// Sends `head` (and nothing else yet) on a fresh connection from `source`.
pub(super) async fn connect_from(source: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .expect("the server accepts the connection")
}

/// Everything the server sends until it closes the connection, or `None` if it is still
/// open after `within`.
pub(super) async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&received).into_owned()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn made_up_methods_neither_reach_the_metrics_nor_grow_them() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let metrics = || async { api.get("/metrics", None).await.text };
    let odd =
        |name: &str| api.client.request(Method::from_bytes(name.as_bytes()).unwrap(), api.url("/healthz"));
    // Every series the loop below can touch exists before the first count: one made-up
    // method, and a scrape (which counts itself after it is rendered).
    api.execute(odd("WARMUP")).await;
    metrics().await;
    let before = metrics().await;

    for i in 0..300 {
        let name = format!("X{i:04}{}", "Q".repeat(if i % 2 == 0 { 16 } else { 2000 }));
        let reply = api.execute(odd(&name)).await;
        reply.error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
        assert_eq!(reply.header("allow"), Some("GET"), "the route says what it takes");
    }

    let after = metrics().await;
    assert!(!after.contains("X0001"), "a made-up method became a label");
    // Counts grow by a digit or so; 300 methods must not add a series each (about 2.8 KB
    // with the latency histogram).
    assert!(after.len() < before.len() + 200, "{} -> {} bytes", before.len(), after.len());
}

#[tokio::test]
async fn the_token_of_a_user_that_does_not_exist_is_refused_on_every_route() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let bob = api.create_user(&unique("bob")).await;
    // Validly signed with the server's secret, for an id that names nobody (as after a
    // database reset under the same secret).
    let now = chrono::Utc::now().timestamp();
    let ghost = uuid::Uuid::new_v4().to_string();
    let token = sign(
        jsonwebtoken::Algorithm::HS256,
        SECRET,
        &json!({ "sub": ghost, "jti": "00112233445566778899", "iat": now, "exp": now + 3600 }),
    );

    let bob_id = bob.id.as_str();
    let gets = [
        "/api/v1/user/get-profile".to_owned(),
        "/api/v1/user/get-other-users".to_owned(),
        "/api/v1/message/conversations".to_owned(),
        "/api/v1/message/sync?since=0".to_owned(),
        format!("/api/v1/message/get-messages/{bob_id}"),
    ];
    for path in gets {
        api.get(&path, Some(&token)).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    }
    api.post_json(
        &format!("/api/v1/message/send/{bob_id}"),
        &json!({ "message": "from nobody" }),
        Some(&token),
    )
    .await
    .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    api.post_json("/api/v1/user/logout", &json!({}), Some(&token))
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    assert_eq!(
        api.try_ws(&token).await.err().and_then(|refused| refused.status),
        Some(StatusCode::UNAUTHORIZED),
        "the /ws handshake"
    );
    // Socket.IO authenticates at CONNECT: refused with connect_error.
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&token={token}", api.port);
    let (mut sio, _) = tokio_tungstenite::connect_async(url).await.expect("the Engine.IO handshake");
    sio.send(Frame::text("40")).await.unwrap();
    let refusal = loop {
        match tokio::time::timeout(WAIT, sio.next()).await.expect("an answer to CONNECT") {
            Some(Ok(Frame::Text(text))) if text.starts_with("44") => break text.to_string(),
            Some(Ok(Frame::Text(text))) => assert!(!text.starts_with("40"), "CONNECT accepted: {text}"),
            Some(Ok(_)) => {}
            other => panic!("the socket ended without a connect_error: {other:?}"),
        }
    };
    assert!(refusal.contains("token"), "{refusal}");
    let conversations = api.get("/api/v1/message/conversations", Some(&bob.token)).await;
    assert_eq!(conversations.data(StatusCode::OK), &json!([]), "bob got no message from nobody");
}

#[tokio::test]
async fn a_body_dripped_slowly_is_cut_at_the_deadline_and_its_connection_closed() {
    let app = spawn(|s| s.http.body_timeout = 1).await;
    let port = app.port;
    let body = json!({ "fullName": "Slow", "username": unique("slow"), "password": PASSWORD }).to_string();
    // A live Engine.IO session: its POSTs are read to the end (one with an unknown sid is
    // answered at once, body unread, and would prove nothing).
    let open = app.api().get("/socket.io/?EIO=4&transport=polling", None).await;
    let open: Value = serde_json::from_str(open.text.strip_prefix('0').expect("an open packet")).unwrap();
    let poll = format!("/socket.io/?EIO=4&transport=polling&sid={}", open["sid"].as_str().expect("sid"));

    for (path, content_type) in
        [("/api/v1/user/register", "application/json"), (poll.as_str(), "text/plain;charset=UTF-8")]
    {
        let mut stream = connect_from("127.0.0.1", port).await;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let (mut reader, mut writer) = stream.into_split();
        // One byte every 300 ms: the whole body would take several seconds.
        let drip = {
            let body = body.clone();
            tokio::spawn(async move {
                for byte in body.bytes() {
                    if writer.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };
        let mut received = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), reader.read_to_end(&mut received)).await;
        drip.abort();
        let answer = String::from_utf8_lossy(&received);
        assert!(closed.is_ok(), "{path}: the connection was still open after 5 s: {answer}");
        assert!(started.elapsed() < Duration::from_secs(3), "{path}: closed after {:?}", started.elapsed());
        if path.starts_with("/api") {
            assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
            assert!(answer.contains("REQUEST_TIMEOUT"), "{path}: {answer}");
        }
    }
}

#[tokio::test]
async fn connections_beyond_the_per_address_cap_are_closed_and_others_still_served() {
    let app = spawn(|s| s.server.max_connections_per_address = 5).await;
    let port = app.port;
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    // Five kept-alive connections, each answered once: all five are counted (workers take
    // connections in any order, so only an answer proves one was admitted).
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = connect_from("127.0.0.1", port).await;
        let request = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).ends_with("}}") {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buffer)).await.unwrap().unwrap();
            assert!(n > 0, "a held connection was closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buffer[..n]);
        }
        held.push(stream);
    }

    // The sixth from the same address is closed without an answer.
    let mut sixth = connect_from("127.0.0.1", port).await;
    let _ = sixth.write_all(healthz.as_bytes()).await;
    let answer = read_until_closed(&mut sixth, WAIT).await;
    assert_eq!(answer.as_deref(), Some(""), "the sixth connection was served");

    // Another address is counted on its own.
    let mut other = connect_from("127.0.0.2", port).await;
    other.write_all(healthz.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut other, WAIT).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A closed connection frees its place.
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut again = connect_from("127.0.0.1", port).await;
        let _ = again.write_all(healthz.as_bytes()).await;
        let answer = read_until_closed(&mut again, WAIT).await.unwrap_or_default();
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place was freed: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_chunked_body_dripped_slowly_is_cut_and_its_connection_closed_whether_read_or_not() {
    let app = spawn(|s| s.http.body_timeout = 1).await;
    let port = app.port;
    // A route that reads its body (cut at the deadline), one that takes none (answered at
    // once), and a Socket.IO poll of an unknown session (answered without reading it): each
    // connection must end, though the client goes on sending chunks.
    for (path, status) in [
        ("/api/v1/user/register", "408"),
        ("/healthz", "405"),
        ("/socket.io/?EIO=4&transport=polling&sid=unknown", "400"),
    ] {
        let stream = connect_from("127.0.0.1", port).await;
        let (mut reader, mut writer) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        // A one-byte chunk every 200 ms, for far longer than the test waits.
        let drip = tokio::spawn(async move {
            for _ in 0..100 {
                if writer.write_all(b"1\r\n \r\n").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut received = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(6), reader.read_to_end(&mut received)).await;
        drip.abort();
        let answer = String::from_utf8_lossy(&received);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {answer}");
        assert!(closed.is_ok(), "{path}: the connection was still open after 6 s: {answer}");
        assert!(started.elapsed() < Duration::from_secs(4), "{path}: closed after {:?}", started.elapsed());
    }
}
