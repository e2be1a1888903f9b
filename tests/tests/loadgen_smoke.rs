//! The load generator against a real server for a few seconds, on both real-time endpoints:
//! every accepted message is delivered exactly once. No timing is asserted; this keeps the
//! benchmark tool honest (a tool that miscounts would make every figure wrong).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tests::TestApp;

/// The `loadgen` executable: `CHAT_LOADGEN_BIN`, or built once per run.
fn loadgen_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| tests::workspace_binary("loadgen", "CHAT_LOADGEN_BIN"))
}

/// Runs `loadgen` with `args` (a scenario and its options, separated by spaces) against
/// `url`; its JSON line.
async fn loadgen(url: &str, transport: &str, args: &str) -> Value {
    let args: Vec<String> =
        ["--transport", transport].into_iter().chain(args.split_whitespace()).map(str::to_owned).collect();
    loadgen_with(url, &args).await
}

/// Runs the load generator against `url` with `args` (global options, then a scenario and
/// its options); its JSON line.
async fn loadgen_with(url: &str, args: &[String]) -> Value {
    let run = tokio::process::Command::new(loadgen_binary())
        .args(["--url", url, "--setup-concurrency", "2"])
        .args(args)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("loadgen finishes within a minute")
        .expect("loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "loadgen {} failed:\n{stdout}", args.join(" "));
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).expect("loadgen prints a JSON line");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// Runs `loadgen send` for a few seconds against a fresh server; returns its JSON line.
async fn send_smoke(transport: &str) -> Value {
    let app = TestApp::spawn().await;
    // Paced well under the default per-user send limit: 4 senders at 10 sends/s each.
    let report = loadgen(&app.base_url(), transport, "send --pairs 4 --duration 3 --rate 40 --grace 5").await;
    app.stop().await;
    report
}

#[track_caller]
fn assert_every_message_delivered_once(report: &Value) {
    assert_eq!(report["scenario"], "send", "{report}");
    let accepted = report["accepted"].as_u64().expect("accepted is a count");
    assert!(accepted > 0, "no send was accepted: {report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    assert_eq!(report["delivered"].as_u64(), Some(accepted), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_send_over_the_native_websocket_loses_nothing() {
    assert_every_message_delivered_once(&send_smoke("ws").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_send_over_socketio_loses_nothing() {
    assert_every_message_delivered_once(&send_smoke("socketio").await);
}

/// The group scenarios at a tiny scale: they run end to end against the real routes, and
/// what they count is exact (every group message on every online socket once, in seq order;
/// every seeded unread count listed as seeded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_group_scenarios_count_exactly() {
    let app = TestApp::spawn().await;
    let url = app.base_url();

    let sent =
        loadgen(&url, "ws", "group-send --members 6 --concurrency 4 --senders 2 --online 3 --duration 1")
            .await;
    assert_eq!(sent["scenario"], "group-send", "{sent}");
    let group = &sent["rounds"][0]["group"];
    let accepted = group["accepted"].as_u64().expect("accepted is a count");
    assert!(accepted > 0 && sent["direct_sends_per_s"].as_f64() > Some(0.0), "{sent}");
    assert_eq!(group["delivery"]["delivered"].as_u64(), Some(3 * accepted), "{sent}");
    for count in ["lost", "duplicated", "out_of_order", "unexpected", "silent_sockets"] {
        assert_eq!(group["delivery"][count], 0, "{count}: {sent}");
    }
    assert_eq!(sent["rounds"][0]["direct"]["lost"], 0, "{sent}");

    let fanout = loadgen(&url, "ws", "group-fanout --members 8 --rate 10 --duration 2 --settle 0.5").await;
    assert_eq!(fanout["scenario"], "group-fanout", "{fanout}");
    assert_eq!(fanout["sent"], 20, "{fanout}");
    assert_eq!(fanout["accepted"], 20, "{fanout}");
    assert_eq!(fanout["delivered"], 8 * 20, "{fanout}");
    for count in ["lost", "duplicated", "out_of_order", "unexpected", "sockets_lost"] {
        assert_eq!(fanout[count], 0, "{count}: {fanout}");
    }

    let listed = loadgen(&url, "ws", "unread-list --conversations 40 --direct 6 --page 7 --walks 2").await;
    assert_eq!(listed["scenario"], "unread-list", "{listed}");
    assert_eq!(listed["listed"], 40, "{listed}");
    assert_eq!(listed["pages_per_walk"], 6, "{listed}");
    assert_eq!(listed["unread_exact"], true, "{listed}");
    assert!(listed["unread_total"].as_u64() > Some(0), "{listed}");
    app.stop().await;
}

/// The message-changes scenario at a tiny scale: every phase gets answers, none fails, and
/// the hot message's reactions count exactly the users whose last answer left theirs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_changes_counts_the_hot_messages_reactions_exactly() {
    let app = TestApp::spawn().await;
    let report =
        loadgen(&app.base_url(), "ws", "changes --users 6 --emojis 2 --own 2 --duration 0.5 --rounds 2")
            .await;
    app.stop().await;
    assert_eq!(report["scenario"], "changes", "{report}");
    assert_eq!(report["users"], 6, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    for round in report["rounds"].as_array().expect("rounds") {
        for phase in ["sends", "reactions", "edits"] {
            assert!(round[phase]["accepted"].as_u64() > Some(0), "{phase}: {report}");
        }
    }
    assert_eq!(report["hot_reactions_exact"], true, "{report}");
    assert_eq!(report["hot_reactions"], report["hot_reactions_expected"], "{report}");
    let counted: u64 =
        report["hot_reactions"].as_object().expect("counts").values().filter_map(Value::as_u64).sum();
    assert!(counted <= 6, "at most one reaction per user: {report}");
}

/// A `redis-server` of the test's own on a free port, started as a daemon so that the load
/// generator can stop it and start it again by shell commands; shut down when dropped.
struct DaemonRedis {
    port: u16,
    start: String,
}

impl DaemonRedis {
    fn start(folder: &Path) -> Self {
        let port = tests::free_port();
        let start = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
             --pidfile {folder}/redis.pid --logfile {folder}/redis.log \
             && until redis-cli -p {port} ping >/dev/null 2>&1; do sleep 0.02; done",
            folder = folder.display()
        );
        let redis = Self { port, start };
        let started = std::process::Command::new("sh")
            .args(["-c", &format!("timeout 10 sh -c \"{}\"", redis.start.replace('"', "\\\""))])
            .status()
            .expect("sh runs");
        assert!(started.success(), "redis-server and redis-cli are installed and start");
        redis
    }

    fn stop_command(&self) -> String {
        format!("redis-cli -p {} shutdown nosave", self.port)
    }
}

impl Drop for DaemonRedis {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh").args(["-c", &self.stop_command()]).output();
    }
}

/// The outage scenario at a tiny scale: two instances on one PostgreSQL database and the
/// test's own Redis, the sockets on one, the messages sent through the other, Redis stopped
/// for 3 s: every accepted message reaches every socket exactly once, every socket caught up
/// from the store once the instance was subscribed again, and the store reads are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_outage_heals_every_socket_exactly_once() {
    let folder = tests::TempDir::new("loadgen-outage");
    let redis = DaemonRedis::start(folder.path());
    let database = tests::TestDatabase::create(tests::Backend::Postgres).await;
    let prefix = format!("outage{}", tests::free_port());
    let settings = |database: &tests::TestDatabase| {
        let mut settings = tests::test_settings(database);
        let mut fanout = tests::shared_redis_fanout(&prefix);
        if let server::settings::FanoutSettings::Redis { redis_url, .. } = &mut fanout {
            *redis_url = secrecy::SecretString::from(format!("redis://127.0.0.1:{}", redis.port));
        }
        settings.fanout = fanout;
        settings
    };
    let (sockets_settings, senders_settings) = (settings(&database), settings(&database));
    let sockets = TestApp::start(sockets_settings, Some(database)).await;
    let senders = TestApp::start(senders_settings, None).await;

    let args = format!(
        "outage --sockets 12 --devices 2 --senders 2 --rate 20 --before 1 --outage 3 --after 1 \
         --grace 20 --settle 0.5 --send-url {}",
        senders.base_url()
    );
    let mut command: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
    command.extend([
        "--redis-stop-cmd".into(),
        redis.stop_command(),
        "--redis-start-cmd".into(),
        redis.start.clone(),
    ]);
    let report = loadgen_with(&sockets.base_url(), &command).await;
    senders.stop().await;
    sockets.stop().await;
    drop(redis);

    assert_eq!(report["scenario"], "outage", "{report}");
    assert_eq!(report["failed_sockets"], 0, "{report}");
    let accepted = report["accepted"].as_u64().expect("accepted is a count");
    assert!(report["outage_accepted"].as_u64() > Some(0), "sends during the outage are accepted: {report}");
    assert_eq!(report["expected"].as_u64(), Some(2 * accepted), "{report}");
    for count in ["lost", "duplicated", "unexpected", "sockets_lost"] {
        assert_eq!(report[count], 0, "{count}: {report}");
    }
    assert!(report["bus_down_seen_s"].is_number() && report["bus_up_seen_s"].is_number(), "{report}");
    let healing = &report["healing"];
    let healed = healing["realtime_healed_connections_total"].as_u64().expect("a count");
    assert!(healed >= 12, "every socket catches up once the bus is back: {report}");
    let reads = healing["realtime_healing_store_reads_total"].as_u64().expect("a count");
    assert!(reads >= healed, "each catch-up reads the store at least once: {report}");
}

/// The presence storm at a tiny scale, in each presence mode: 6 users in a ring (2 partners
/// each) connect within half a second; every socket opens, and every client view ends with
/// its partners online (and, with the full list, all 6 users listed). The scoped run's bound
/// of 2 online users makes the server switch mode during the storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_presence_storm_ends_with_every_view_complete_in_both_modes() {
    for (full_list_max, scoped) in [(1000, false), (2, true)] {
        let app =
            TestApp::spawn_with(tests::Backend::Sqlite, |s| s.presence.full_list_max = full_list_max).await;
        let report = loadgen(
            &app.base_url(),
            "ws",
            "presence-storm --users 6 --ring 1 --spread 0.5 --quiet 1.5 --max-wait 20",
        )
        .await;
        app.stop().await;
        assert_eq!(report["scenario"], "presence-storm", "{report}");
        assert_eq!(report["opened"], 6, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        assert_eq!(report["quiet"], true, "{report}");
        assert_eq!(report["complete_views"], 6, "{report}");
        assert!(report["online_users_frames"].as_u64() > Some(0), "{report}");
        assert!(report["server_cpu_s"].is_number(), "the server's pid is found by its port: {report}");
        if scoped {
            assert!(report["presence_mode_frames"].as_u64() >= Some(6), "{report}");
            assert!(report["presence_frames"].as_u64() > Some(0), "{report}");
        } else {
            assert_eq!(report["presence_mode_frames"], 0, "{report}");
            assert_eq!(report["presence_frames"], 0, "{report}");
        }
    }
}
