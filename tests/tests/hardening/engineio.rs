//! Engine.IO sessions before authentication: caps, handshake rate, deadlines.

use super::*;

const HANDSHAKE: &str = "/socket.io/?EIO=4&transport=polling";

/// A polling handshake: the Engine.IO sid, or the refusal.
async fn engine_io_handshake(api: &Api) -> Result<String, Reply> {
    let reply = api.get(HANDSHAKE, None).await;
    if reply.status != StatusCode::OK {
        return Err(reply);
    }
    let open: Value = reply
        .text
        .strip_prefix('0')
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("an open packet: {}", reply.text));
    Ok(open["sid"].as_str().expect("sid").to_owned())
}

/// Posts Engine.IO packets to a polling session; the status.
async fn engine_io_post(api: &Api, sid: &str, packets: &str) -> StatusCode {
    let path = format!("{HANDSHAKE}&sid={sid}");
    let request = api.request(Method::POST, &path, None).body(packets.to_owned());
    api.execute(request).await.status
}

/// Closes a polling session and waits until the server has let it go.
async fn engine_io_close(api: &Api, sid: &str) {
    assert_eq!(engine_io_post(api, sid, "1").await, StatusCode::OK);
    let deadline = Instant::now() + WAIT;
    while engine_io_post(api, sid, "6").await == StatusCode::OK {
        assert!(Instant::now() < deadline, "the session outlived its close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts Engine.IO's error answer to a refused handshake.
#[track_caller]
fn refused(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status, "body: {}", reply.text);
    assert_eq!(reply.body, json!({ "code": 4, "message": message }), "body: {}", reply.text);
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in seconds: {reply:?}"));
    assert!(retry >= 1, "Retry-After {retry}");
}

/// Only the limit under test is on.
fn no_session_limits(settings: &mut Settings) {
    settings.limits.socketio_sessions = 0;
    settings.limits.socketio_sessions_per_ip = 0;
    settings.limits.socketio_handshakes_per_minute_per_ip = 0;
}

#[tokio::test]
async fn engine_io_handshakes_past_the_per_address_cap_are_refused() {
    let app = spawn(|s| {
        no_session_limits(s);
        s.limits.socketio_sessions_per_ip = 3;
    })
    .await;
    let api = app.api();
    let mut sids = Vec::new();
    for _ in 0..3 {
        sids.push(engine_io_handshake(&api).await.expect("under the cap"));
    }
    let reply = engine_io_handshake(&api).await.expect_err("over the cap");
    refused(&reply, StatusCode::TOO_MANY_REQUESTS, "Too many sessions from this address");
    // A WebSocket handshake opens a session too: refused before the protocol switch.
    let url = format!("ws://127.0.0.1:{}/socket.io/?EIO=4&transport=websocket", app.port);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429)
        }
        other => panic!("expected a 429 to the WebSocket handshake, got {:?}", other.map(|_| ())),
    }
    // A session that ends frees its place.
    engine_io_close(&api, &sids[0]).await;
    engine_io_handshake(&api).await.expect("a place was freed");
}

#[tokio::test]
async fn engine_io_handshakes_past_the_per_address_rate_are_refused() {
    let app = spawn(|s| {
        no_session_limits(s);
        s.limits.socketio_handshakes_per_minute_per_ip = 2;
    })
    .await;
    let api = app.api();
    for _ in 0..2 {
        let sid = engine_io_handshake(&api).await.expect("within the rate");
        engine_io_close(&api, &sid).await;
    }
    // No session is open: the handshakes themselves are counted.
    let reply = engine_io_handshake(&api).await.expect_err("over the rate");
    refused(&reply, StatusCode::TOO_MANY_REQUESTS, "Too many handshakes from this address");
}

#[tokio::test]
async fn engine_io_handshakes_past_the_instance_cap_are_refused() {
    let app = spawn(|s| {
        no_session_limits(s);
        s.limits.socketio_sessions = 2;
    })
    .await;
    let api = app.api();
    for _ in 0..2 {
        engine_io_handshake(&api).await.expect("under the cap");
    }
    let reply = engine_io_handshake(&api).await.expect_err("over the cap");
    refused(&reply, StatusCode::SERVICE_UNAVAILABLE, "Too many sessions on this server");
}

#[tokio::test]
async fn an_engine_io_session_that_never_connects_is_closed_at_the_deadline_whatever_it_sends() {
    let app = spawn(|s| s.socketio.connect_timeout = 1).await;
    let api = app.api();
    let sid = engine_io_handshake(&api).await.expect("a session");
    let started = Instant::now();
    // DISCONNECT used to restart the connect deadline, so this kept the session forever.
    while engine_io_post(&api, &sid, "41").await == StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(4), "still open after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "closed after {:?}", started.elapsed());
    let reply = api.get(&format!("{HANDSHAKE}&sid={sid}"), None).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "body: {}", reply.text);
    assert_eq!(reply.body["code"], json!(1), "the session is gone: {}", reply.text);
}
