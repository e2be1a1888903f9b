//! Sockets end with the token they were opened with (logout, on any instance, or expiry);
//! presence churn and typing notices cost what they should.

use super::*;

/// How soon a revocation must close the token's sockets.
const REVOKED_WITHIN: Duration = Duration::from_secs(1);

/// A Socket.IO socket over the WebSocket transport, joined to the main namespace.
async fn socketio(api: &Api, token: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket&token={token}", api.port);
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the handshake answers")
        .expect("the handshake succeeds");
    let open = next_text(&mut ws, WAIT).await;
    assert!(open.starts_with('0'), "{open}");
    ws.send(Frame::text("40")).await.unwrap();
    loop {
        let packet = next_text(&mut ws, WAIT).await;
        if packet.starts_with("40") {
            return ws;
        }
        assert!(!packet.starts_with("44"), "CONNECT refused: {packet}");
    }
}

/// The next text frame; panics at the deadline or if the socket ends.
async fn next_text(ws: &mut Ws, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no frame within {timeout:?}"),
            Ok(Some(Ok(Frame::Text(text)))) => return text.to_string(),
            Ok(Some(Ok(Frame::Close(reason)))) => panic!("closed: {reason:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => panic!("socket failed: {error}"),
            Ok(None) => panic!("socket ended"),
        }
    }
}

/// Waits for the server to end a Socket.IO socket: the reason it gives (`sessionEnded`),
/// then the DISCONNECT packet.
async fn socketio_ended(ws: &mut Ws, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut reason = None;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let packet = next_text(ws, left).await;
        if let Some(event) = packet.strip_prefix("42") {
            let event: Value = serde_json::from_str(event).expect("an event array");
            if event[0] == "sessionEnded" {
                reason = event[1]["reason"].as_str().map(str::to_owned);
            }
        } else if packet == "41" {
            return reason.expect("the reason comes before the DISCONNECT");
        }
    }
}

#[tokio::test]
async fn logout_closes_the_sockets_opened_with_the_token_and_only_those() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let other_device = api.login(&alice.username, PASSWORD).await.data(StatusCode::OK)["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut ws = api.connect_ws(&alice.token).await;
    let mut sio = socketio(&api, &alice.token).await;
    let mut kept = api.connect_ws(&other_device).await;

    let started = Instant::now();
    api.logout(&alice.token).await.data(StatusCode::OK);
    let (code, reason) = ws.close_frame(REVOKED_WITHIN).await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("revoked"), "{reason}");
    let reason = socketio_ended(&mut sio, REVOKED_WITHIN.saturating_sub(started.elapsed())).await;
    assert!(reason.contains("revoked"), "{reason}");

    // The other device's token was not revoked: its socket still gets the user's messages.
    api.send(&bob.token, &alice.id, "still here?").await.data(StatusCode::CREATED);
    let message = kept.next_event("newMessage", WAIT).await;
    assert_eq!(message["message"], "still here?");
}

#[tokio::test]
async fn a_socket_ends_when_its_token_expires() {
    let app = spawn(|s| s.auth.token_ttl = 2).await;
    let api = app.api();
    let user = api.create_user(&unique("brief")).await;
    let mut ws = api.connect_ws(&user.token).await;
    let mut sio = socketio(&api, &user.token).await;

    let (code, reason) = ws.close_frame(Duration::from_secs(4)).await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("expired"), "{reason}");
    let reason = socketio_ended(&mut sio, Duration::from_secs(2)).await;
    assert!(reason.contains("expired"), "{reason}");
}

/// Two in-process instances on one PostgreSQL database and the test Redis.
async fn cluster_of_two() -> (TestApp, TestApp) {
    tests::two_instances(&unique("sessions"), |_| {}).await
}

#[tokio::test]
async fn a_logout_on_one_instance_closes_the_sockets_on_another() {
    let (first, second) = cluster_of_two().await;
    let user = first.api().create_user(&unique("roaming")).await;
    let mut ws = second.api().connect_ws(&user.token).await;
    let mut sio = socketio(&second.api(), &user.token).await;

    let started = Instant::now();
    first.logout(&user.token).await.data(StatusCode::OK);
    let (code, reason) = ws.close_frame(REVOKED_WITHIN).await;
    assert_eq!(code, CloseCode::Policy);
    assert!(reason.contains("revoked"), "{reason}");
    let reason = socketio_ended(&mut sio, REVOKED_WITHIN.saturating_sub(started.elapsed())).await;
    assert!(reason.contains("revoked"), "{reason}");
    drop(second);
}

#[tokio::test]
async fn a_user_flapping_online_and_offline_costs_idle_clients_a_bounded_number_of_lists() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let mut idle = Vec::new();
    for _ in 0..10 {
        let user = api.create_user(&unique("idle")).await;
        idle.push(api.connect_ws(&user.token).await);
    }
    let flapper = api.create_user(&unique("flapper")).await;
    // The lists the idle clients' own arrivals caused go out within a window.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counters: Vec<Arc<Mutex<usize>>> = idle.iter().map(|_| Arc::default()).collect();
    let readers: Vec<_> = idle
        .into_iter()
        .zip(&counters)
        .map(|(mut ws, count)| {
            let count = count.clone();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = ws.stream.next().await {
                    if let Frame::Text(text) = frame {
                        let value: Value = serde_json::from_str(text.as_str()).unwrap();
                        if value["event"] == "onlineUsers" {
                            *count.lock().unwrap() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    // Let the reader tasks take what was already queued, then count from zero.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for count in &counters {
        *count.lock().unwrap() = 0;
    }

    let started = Instant::now();
    let cycles = 40;
    for _ in 0..cycles {
        let mut ws = api.try_ws(&flapper.token).await.expect("the handshake succeeds");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = ws.stream.close(None).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flapped = started.elapsed();
    // The last state goes out within a second of the last change.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for reader in readers {
        reader.abort();
    }
    // One list at the first change, one per second of flapping, one trailing.
    let bound = 2 + flapped.as_secs() as usize + 1;
    for count in &counters {
        let lists = *count.lock().unwrap();
        assert!(lists >= 1, "the flapper's changes were never announced");
        assert!(
            lists <= bound,
            "an idle client got {lists} online lists for {cycles} connect/disconnect cycles in {flapped:?} (at most {bound})"
        );
    }
}

#[tokio::test]
async fn typing_reaches_a_conversation_partner_but_not_a_stranger() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let stranger = api.create_user(&unique("stranger")).await;
    api.send(&bob.token, &alice.id, "hello").await.data(StatusCode::CREATED);
    let mut alice_ws = api.connect_ws(&alice.token).await;
    let mut bob_ws = api.connect_ws(&bob.token).await;
    let mut stranger_ws = api.connect_ws(&stranger.token).await;

    let typing = json!({ "event": "typing", "data": { "to": alice.id, "isTyping": true } }).to_string();
    for _ in 0..5 {
        stranger_ws.stream.send(Frame::text(typing.clone())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob_ws.stream.send(Frame::text(typing.clone())).await.unwrap();

    let notice = alice_ws.next_event("typing", WAIT).await;
    assert_eq!(notice["from"], json!(bob.id), "the first notice is the partner's: {notice}");
    // Nothing else follows: the stranger's notices were dropped, not delayed.
    let more = tokio::time::timeout(Duration::from_millis(500), alice_ws.next_event("typing", WAIT)).await;
    assert!(more.is_err(), "another typing notice arrived: {more:?}");
}

/// Whether the server holds its end of the TCP connection from `client_port` open: an
/// ESTABLISHED (`01`) entry from `server_port` to it in the kernel's table.
fn server_end_established(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("the kernel's TCP table");
    let (local, remote) = (format!(":{server_port:04X}"), format!(":{client_port:04X}"));
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&local) && fields[2].ends_with(&remote) && fields[3] == "01"
    })
}

/// A client with a 4 KiB receive buffer that never reads, on `path` (with `?token=`), having
/// sent `join` (if any); 60 messages of 20 kB to it must make the server drop its end of the
/// TCP connection within 10 s.
async fn a_client_that_never_reads_is_dropped(path: &str, join: Option<&str>) {
    let app = spawn(|s| {
        s.websocket.queue_capacity = 8;
        s.http.write_timeout = 2;
    })
    .await;
    let api = app.api();
    let stalled = api.create_user(&unique("stalled")).await;
    let sender = api.create_user(&unique("sender")).await;
    // A small receive buffer, never read from: the server's writes back up at once.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{}", api.port).parse().unwrap()).await.unwrap();
    let client_port = stream.local_addr().unwrap().port();
    let separator = if path.contains('?') { '&' } else { '?' };
    let url = format!("ws://127.0.0.1:{}{path}{separator}token={}", api.port, stalled.token);
    let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
        .await
        .expect("the handshake succeeds");
    if let Some(join) = join {
        ws.send(Frame::text(join)).await.unwrap();
        // The CONNECT is served within milliseconds; nothing is read to confirm it.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(server_end_established(api.port, client_port));

    // 20 kB a message: far more than every buffer and the queue hold, so it is evicted.
    let text = "\u{1F600}".repeat(5000);
    for _ in 0..60 {
        api.send(&sender.token, &stalled.id, &text).await.data(StatusCode::CREATED);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_end_established(api.port, client_port) {
        assert!(
            Instant::now() < deadline,
            "the server still holds the connection of a client that never reads ({path})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);
}

#[tokio::test]
async fn a_client_that_never_reads_loses_its_connection_once_evicted() {
    a_client_that_never_reads_is_dropped("/ws", None).await;
}

#[tokio::test]
async fn a_socket_io_client_that_never_reads_loses_its_connection_once_evicted() {
    a_client_that_never_reads_is_dropped("/socket.io/?EIO=4&transport=websocket", Some("40")).await;
}
