//! The periodic check of the stream heads delivers what the fan-out bus never carried.
//!
//! Two in-process instances share one PostgreSQL database and the test Redis, but with
//! different fan-out prefixes: the second never hears the first's events, as if each of
//! them were lost on the bus. Only the check of the heads brings a message to a socket on
//! the second instance, once, within two intervals.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use server::settings::FanoutSettings;
use tests::{Backend, TestApp, TestDatabase};

const INTERVAL_MS: u64 = 300;
const WAIT: Duration = Duration::from_secs(10);

async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + WAIT;
    while app.api().get("/readyz", None).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "an instance is not ready (is Redis running?)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settings(database: &TestDatabase, prefix: &str) -> server::Settings {
    let mut settings = tests::test_settings(database);
    let mut fanout = tests::shared_redis_fanout(prefix);
    if let FanoutSettings::Redis { stream_check_interval_ms, .. } = &mut fanout {
        *stream_check_interval_ms = INTERVAL_MS;
    }
    settings.fanout = fanout;
    settings
}

#[tokio::test]
async fn a_message_whose_event_never_arrives_reaches_the_socket_once_through_the_check() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let id = std::process::id();
    let (first, second) =
        (settings(&database, &format!("check{id}a")), settings(&database, &format!("check{id}b")));
    let sender = TestApp::start(first, Some(database)).await;
    let receiver = TestApp::start(second, None).await;
    wait_ready(&sender).await;
    wait_ready(&receiver).await;
    let (api, other) = (sender.api(), receiver.api());
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    api.send_ok(&alice, &bob, "before").await;

    let mut socket = other.connect_ws(&bob.token).await;
    // Opened at the head (no since), registered once connect_ws has its first frames.

    let sent = api.send_ok(&alice, &bob, "never on the bus").await;
    let started = Instant::now();
    let healed = socket.next_event("newMessage", Duration::from_millis(2 * INTERVAL_MS + 3_000)).await;
    let took = started.elapsed();
    assert_eq!(healed["_id"], sent["_id"], "{healed}");
    assert_eq!(healed["cursor"], "2");
    socket.assert_no_event("newMessage", Duration::from_millis(4 * INTERVAL_MS)).await;
    eprintln!("delivered by the check after {took:?}");
    let metrics = other.get("/metrics", None).await.text;
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|line| line.split(' ').next() == Some(name));
        line.and_then(|line| line.split(' ').nth(1)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    assert!(value("realtime_stream_checks_total") >= 1.0, "{metrics}");
    assert_eq!(value("realtime_stream_check_healed_connections_total"), 1.0, "{metrics}");

    drop(socket);
    receiver.stop().await;
    sender.stop().await;
}
