//! Connections upgraded to a WebSocket: served apart from the HTTP/1 dispatcher once their
//! handshake is answered, yet nothing the client sent early is lost, a refusal is an answer
//! followed by the close, and every open socket keeps its place under the connection caps.

use super::http_edge::{connect_from, read_until_closed};
use super::*;

/// A WebSocket handshake for `target` (path and query), as a browser sends it.
fn upgrade_request(port: u16, target: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A ping frame carrying `payload`, masked as a client must send it.
fn masked_ping(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x89, 0x80 | u8::try_from(payload.len()).expect("a short payload")];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    frame
}

/// The opcode and payload of every whole frame at the start of `bytes` (a server's frames,
/// unmasked).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let (length, start) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if bytes.len() < start + length {
            break;
        }
        frames.push((bytes[0] & 0x0f, bytes[start..start + length].to_vec()));
        bytes = &bytes[start + length..];
    }
    frames
}

/// An HTTP/1.1 body as sent: de-chunked when `head` says it is chunked.
fn body_of(head: &str, body: &str) -> String {
    if !head.to_ascii_lowercase().contains("\r\ntransfer-encoding: chunked") {
        return body.to_owned();
    }
    let (mut rest, mut whole) = (body, String::new());
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size =
            usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("a chunk size: {body:?}"));
        if size == 0 {
            break;
        }
        whole.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    whole
}

/// Sends the handshake for `target` on a fresh connection; the answer's head and body, once
/// the server has closed the connection (which it must within a few seconds).
async fn refused_upgrade(port: u16, target: &str) -> (String, Value) {
    let mut stream = connect_from("127.0.0.1", port).await;
    stream.write_all(upgrade_request(port, target).as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{target}: the connection was still open after 5 s"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{target}: {answer:?}"));
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{target}: the refusal says the connection closes: {head}"
    );
    let body = body_of(head, body);
    let body =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: a JSON body ({e}): {body:?}"));
    (head.to_owned(), body)
}

/// Asserts the REST error envelope with `code`.
#[track_caller]
fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["code"], json!(code), "{body}");
    assert!(body["errMessage"].as_str().is_some_and(|m| !m.trim().is_empty()), "{body}");
    assert!(body.get("responseData").is_none(), "{body}");
}

/// A user registered over a connection that is closed once answered: it holds no place
/// under the connection caps afterwards.
async fn user_without_a_kept_connection(port: u16) -> TestUser {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    Api::with_client(port, client).create_user(&unique("upgrader")).await
}

/// A `/ws` socket from 127.0.0.1, confirmed open by its first event.
async fn open_ws(api: &Api, token: &str) -> tests::WsClient {
    let mut socket = api.connect_ws_with_query(token).await;
    socket.next_event("onlineUsers", WAIT).await;
    socket
}

/// Asserts that a connection from `source` is closed without an answer.
async fn assert_refused(source: &str, port: u16) {
    let mut stream = connect_from(source, port).await;
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(healthz.as_bytes()).await;
    let answer = read_until_closed(&mut stream, WAIT).await;
    assert_eq!(answer.as_deref(), Some(""), "a connection from {source} over the cap was served");
}

/// Opens a `/ws` socket from 127.0.0.1 as soon as the server has let go of a closed one.
async fn open_ws_once_freed(api: &Api, token: &str) -> tests::WsClient {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut socket) = api.try_ws(token).await {
            socket.next_event("onlineUsers", WAIT).await;
            return socket;
        }
        assert!(Instant::now() < deadline, "no place was freed by the closed socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_frame_sent_with_the_handshake_is_not_lost() {
    let app = spawn(|_| {}).await;
    let user = app.create_user(&unique("early")).await;
    let mut stream = connect_from("127.0.0.1", app.port).await;
    stream.set_nodelay(true).unwrap();
    // The handshake and a ping in one write: the ping reaches the server with the request
    // head, before the upgrade is answered.
    let mut bytes = upgrade_request(app.port, &format!("/ws?token={}", user.token)).into_bytes();
    bytes.extend(masked_ping(b"early"));
    stream.write_all(&bytes).await.unwrap();

    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await;
        let lossy = String::from_utf8_lossy(&received).into_owned();
        let n = read.unwrap_or_else(|_| panic!("no pong within {WAIT:?}; received {lossy:?}")).unwrap();
        assert!(n > 0, "the connection closed; received {lossy:?}");
        received.extend_from_slice(&buffer[..n]);
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&received[..end]);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let frames = frames(&received[end + 4..]);
        assert!(frames.iter().all(|(opcode, _)| *opcode != 0x8), "the server closed the socket: {frames:?}");
        if frames.iter().any(|(opcode, payload)| *opcode == 0xA && payload == b"early") {
            break;
        }
    }
}

#[tokio::test]
async fn a_refused_upgrade_is_answered_with_the_envelope_and_closed() {
    let app = spawn(|s| s.limits.socketio_handshakes_per_minute_per_ip = 1).await;
    let port = app.port;
    let user = app.create_user(&unique("refused")).await;

    for target in ["/ws", "/ws?token=not-a-token"] {
        let (head, body) = refused_upgrade(port, target).await;
        assert!(head.starts_with("HTTP/1.1 401"), "{target}: {head}");
        assert_envelope(&body, "UNAUTHENTICATED");
    }
    // Refused by the handler itself, after authentication.
    let (head, body) = refused_upgrade(port, &format!("/ws?token={}&since=nonsense", user.token)).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_envelope(&body, "VALIDATION");
    assert_eq!(body["field"], json!("since"), "{body}");

    // Socket.IO authenticates inside its protocol (connect_error), but refuses a handshake
    // over its allowance before the protocol switch, with Engine.IO's body.
    assert_eq!(app.get("/socket.io/?EIO=4&transport=polling", None).await.status, StatusCode::OK);
    let (head, body) = refused_upgrade(port, "/socket.io/?EIO=4&transport=websocket").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert_eq!(body, json!({ "code": 4, "message": "Too many handshakes from this address" }));
}

#[tokio::test]
async fn upgraded_sockets_count_against_the_per_address_cap() {
    let app = spawn(|s| s.server.max_connections_per_address = 2).await;
    let port = app.port;
    let user = user_without_a_kept_connection(port).await;
    let api = app.api();
    let mut sockets = vec![open_ws(&api, &user.token).await, open_ws(&api, &user.token).await];

    assert_refused("127.0.0.1", port).await;
    // Another address is counted on its own.
    let mut other = connect_from("127.0.0.2", port).await;
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    other.write_all(healthz.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut other, WAIT).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A closed socket frees its place; the other one still holds its own.
    sockets.pop().unwrap().close().await;
    let _again = open_ws_once_freed(&api, &user.token).await;
    assert_refused("127.0.0.1", port).await;
}

#[tokio::test]
async fn upgraded_sockets_count_against_the_total_cap() {
    let app = spawn(|s| {
        s.server.max_connections = 3;
        s.server.max_connections_per_address = 0;
    })
    .await;
    let port = app.port;
    let user = user_without_a_kept_connection(port).await;
    let api = app.api();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(open_ws(&api, &user.token).await);
    }

    // Full, whatever the address.
    assert_refused("127.0.0.2", port).await;
    assert_refused("127.0.0.1", port).await;

    sockets.pop().unwrap().close().await;
    let _again = open_ws_once_freed(&api, &user.token).await;
    assert_refused("127.0.0.2", port).await;
}
