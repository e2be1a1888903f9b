//! Changes to sent messages over `/socket.io/` with the published `socket.io-client` v4
//! (`tests/js/socketio_changes.mjs`, run with Node, one scenario per test): `messageUpdated`
//! on every device at consecutive cursors with each reader's `me`, one event for the same
//! change twice, replies' quotes, a client that knows only `newMessage`, and a resume with
//! `auth.since` that replays missed changes in order, once.

use serde_json::{json, Value};
use tests::{run_node_client, Backend, TestApp};

/// Runs `scenario` of `tests/js/socketio_changes.mjs` in `mode` against a fresh server with
/// three users; fails with the client's output unless it passed.
async fn run(scenario: &str, mode: &str) {
    let app = TestApp::spawn_with(Backend::from_env(), |_| {}).await;
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let user = app.create_user(name).await;
        users.push(json!({ "id": user.id, "token": user.token }));
    }
    let mut node = tokio::process::Command::new("node");
    node.arg(tests::workspace_dir().join("tests/js/socketio_changes.mjs"))
        .args([scenario, mode])
        .env("CHAT_BASE_URL", app.base_url())
        .env("CHAT_USERS", Value::Array(users).to_string());
    let what = format!("socket.io-client scenario {scenario} ({mode})");
    run_node_client(node, &what, &format!("ok - {scenario} ({mode})")).await;
    app.stop().await;
}

macro_rules! scenarios {
    ($($name:ident => $scenario:literal, $mode:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run($scenario, $mode).await;
        }
    )*};
}

scenarios! {
    direct_changes_reach_every_device_once_and_a_resumed_one_in_order_after_an_upgrade => "direct", "default";
    direct_changes_reach_every_device_once_and_a_resumed_one_in_order_over_websocket => "direct", "websocket";
    direct_changes_reach_every_device_once_and_a_resumed_one_in_order_over_long_polling => "direct", "polling";
    group_replies_reactions_and_deletions_reach_every_member_after_an_upgrade => "group", "default";
    group_replies_reactions_and_deletions_reach_every_member_over_long_polling => "group", "polling";
}
