//! What the API suite adds to the test library's harness: its server profile and the
//! assertions on the documented object shapes.

use serde_json::Value;
use tests::{Backend, TestApp, TestUser};

/// The token lifetime of `config/default.toml`, which the cookie's `Max-Age` follows.
pub const TOKEN_TTL_SECS: u64 = 604_800;

/// The suite's server: the test profile on the backend of `CHAT_TEST_BACKEND`, with the
/// default token lifetime and no search limit (the suite searches in bursts; the limit has
/// tests of its own in hardening).
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with `adjust` applied to its settings.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut server::Settings)) -> TestApp {
    TestApp::spawn_with(Backend::from_env(), |settings| {
        settings.auth.token_ttl = TOKEN_TTL_SECS;
        settings.limits.requests.searches_per_second_per_user = 0;
        adjust(settings);
    })
    .await
}

/// Splits a `Set-Cookie` value into its value and its attributes (lower-cased names).
pub fn parse_cookie(header: &str) -> (String, Vec<(String, String)>) {
    let mut parts = header.split(';').map(str::trim);
    let first = parts.next().unwrap_or_default();
    let value = first.split_once('=').map(|(_, v)| v.to_owned()).unwrap_or_default();
    let attributes = parts
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_owned()),
            None => (p.to_ascii_lowercase(), String::new()),
        })
        .collect();
    (value, attributes)
}

/// A timestamp as API.md writes them: RFC 3339, UTC.
#[track_caller]
pub fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("a timestamp must be a string: {value}"));
    assert!(text.ends_with('Z'), "not UTC: {text}");
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("not RFC 3339 ({e}): {text}"));
}

/// A public user object: exactly the documented fields.
#[track_caller]
pub fn assert_user(value: &Value, username: &str) {
    let object = value.as_object().unwrap_or_else(|| panic!("a user must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["_id", "avatar", "createdAt", "fullName", "gender", "updatedAt", "username"],
        "user fields: {value}"
    );
    assert!(value["_id"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert_eq!(value["username"], username);
    // A URL given at registration, or the server's own drawing of the user's initials.
    let default = format!("/api/v1/user/{}/avatar", value["_id"].as_str().unwrap_or_default());
    assert!(value["avatar"].as_str().is_some_and(|a| a.starts_with("http") || a == default), "{value}");
    assert_timestamp(&value["createdAt"]);
    assert_timestamp(&value["updatedAt"]);
}

/// A message object: exactly the documented fields.
#[track_caller]
pub fn assert_message(value: &Value, from: &TestUser, to: &TestUser, text: &str) {
    let object = value.as_object().unwrap_or_else(|| panic!("a message must be an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "_id",
            "conversationId",
            "createdAt",
            "kind",
            "message",
            "reactions",
            "receiverId",
            "senderId",
            "seq",
            "version"
        ],
        "message fields: {value}"
    );
    assert_eq!(value["kind"], "text", "{value}");
    assert_eq!(value["reactions"], serde_json::json!([]), "{value}");
    assert_eq!(value["version"], value["seq"], "a message never changed: {value}");
    assert!(value["seq"].as_u64().is_some_and(|seq| seq >= 1), "{value}");
    assert!(value["_id"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert!(value["conversationId"].as_str().is_some_and(|id| !id.is_empty()), "{value}");
    assert_eq!(value["senderId"], from.id.as_str());
    assert_eq!(value["receiverId"], to.id.as_str());
    assert_eq!(value["message"], text);
    assert_timestamp(&value["createdAt"]);
}
