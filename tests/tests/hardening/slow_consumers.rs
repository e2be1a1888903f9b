//! A consumer that stops reading is evicted without slowing anyone else.

use super::*;

/// A `/ws` connection over a socket with a small receive buffer, so that a client that
/// stops reading backs up into the server quickly.
async fn stalled_ws(api: &Api, token: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{}", api.port).parse().unwrap()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("{}?token={token}", api.ws_url()),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("the handshake succeeds");
    ws
}

#[tokio::test]
async fn a_stalled_socket_is_evicted_while_live_delivery_stays_fast() {
    let app = spawn(|s| s.websocket.queue_capacity = 8).await;
    let api = app.api();
    let stalled_user = api.create_user(&unique("stalled")).await;
    let live_user = api.create_user(&unique("live")).await;

    let mut stalled = stalled_ws(&api, &stalled_user.token).await;
    // The stalled client reads nothing from here on (until the end of the test).
    let mut live = api.connect_ws(&live_user.token).await;
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel::<(Value, Instant)>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(frame)) = live.stream.next().await {
            if let Frame::Text(text) = frame {
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                let _ = events_tx.send((value, Instant::now()));
            }
        }
    });

    // 5000 four-byte characters: 20 kB a frame, so that the socket buffers fill quickly.
    let text = "\u{1F600}".repeat(5000);
    let stalled_id = json!(stalled_user.id);
    let mut worst = Duration::ZERO;
    let mut sent = 0usize;
    let mut evicted_at: Option<usize> = None;
    // Past the eviction, a few more sends show delivery to others is unaffected.
    while evicted_at.is_none_or(|at| sent < at + 20) {
        assert!(sent < 1500, "{sent} messages sent and the stalled socket is still registered");
        let started = Instant::now();
        let reply = api.send(&live_user.token, &stalled_user.id, &text).await;
        let id = reply.data(StatusCode::CREATED)["_id"].as_str().unwrap().to_owned();
        sent += 1;
        let arrived = loop {
            match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
                Ok(Some((event, at)))
                    if event["event"] == "newMessage" && event["data"]["_id"] == id.as_str() =>
                {
                    break at
                }
                // The stalled user going offline is how its eviction shows from outside.
                Ok(Some((event, _))) if event["event"] == "onlineUsers" => {
                    let online = event["data"].as_array().expect("ids");
                    if !online.contains(&stalled_id) && evicted_at.is_none() {
                        evicted_at = Some(sent);
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the live client's socket ended at message {sent}"),
                Err(_) => panic!("message {sent} did not reach the live client within 1 s"),
            }
        };
        let latency = arrived - started;
        assert!(latency < Duration::from_secs(1), "message {sent} took {latency:?}");
        worst = worst.max(latency);
        // Paced, so that the sends span the presence announcement of the eviction (a
        // user's changes are announced at most once per second) however fast they are.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    reader.abort();

    // The stalled client now reads: what was buffered, then the end of the connection.
    let mut received = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match stalled.next().await {
                Some(Ok(Frame::Close(frame))) => {
                    if let Some(frame) = frame {
                        assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
                    }
                    return;
                }
                Some(Ok(Frame::Text(_))) => received += 1,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled socket was never closed ({received} frames read)");
    assert!(received < sent, "the stalled socket got all {sent} messages: it was never evicted");
    eprintln!("evicted after {evicted_at:?} of {sent} messages; worst live latency {worst:?}");
}
