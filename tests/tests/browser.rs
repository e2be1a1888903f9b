//! The built-in web client: served with the right types and policy (at a person's and a
//! group's address too), absent when turned off, the server-drawn default avatars it shows,
//! and the page used in headless Chromium
//! (`tests/browser/*.test.mjs` on `harness.mjs`, driven by playwright-core against Debian's
//! Chromium, with axe-core for accessibility; `scripts/install-browser-deps.sh` installs them).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{header, StatusCode};
use serde_json::json;
use tests::{Backend, Reply, TestApp, PASSWORD};

/// Longer than the scenario's own limit, so that its report, not this one, says what hung.
const BROWSER_RUN_LIMIT: Duration = Duration::from_secs(300);

/// A server with the web client on or off.
async fn start(web_client: bool) -> TestApp {
    TestApp::spawn_with(Backend::from_env(), |settings| settings.web.enabled = web_client).await
}

fn header_of(reply: &Reply, name: header::HeaderName) -> String {
    reply.header(name.as_str()).unwrap_or_else(|| panic!("no {name} header")).to_owned()
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types_and_a_strict_policy() {
    let app = start(true).await;

    let page = app.get("/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(header_of(&page, header::CONTENT_TYPE), "text/html; charset=utf-8");
    let policy = header_of(&page, header::CONTENT_SECURITY_POLICY);
    for directive in ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(policy.contains(directive), "{directive} missing from {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header_of(&page, header::CACHE_CONTROL), "no-cache");
    let etag = header_of(&page, header::ETAG);
    assert!(page.text.contains("<script src=\"/assets/app.js\" defer></script>"));

    let revalidated = app.client.get(app.url("/")).header(header::IF_NONE_MATCH, &etag).send().await.unwrap();
    assert_eq!(revalidated.status(), 304);

    for (path, content_type) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let asset = app.get(path, None).await;
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(header_of(&asset, header::CONTENT_TYPE), content_type, "{path}");
        assert_eq!(header_of(&asset, header::X_CONTENT_TYPE_OPTIONS), "nosniff", "{path}");
        assert!(!asset.text.is_empty(), "{path} is empty");
    }

    let missing = app.get("/assets/missing.js", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["code"], "NOT_FOUND");

    app.stop().await;
}

#[tokio::test]
async fn with_the_web_client_off_the_root_is_a_404_envelope() {
    let app = start(false).await;

    for path in ["/", "/assets/app.js"] {
        let response = app.get(path, None).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.body["success"], false, "{path}");
        assert_eq!(response.body["code"], "NOT_FOUND", "{path}");
    }
    assert_eq!(app.get("/healthz", None).await.status, 200);

    app.stop().await;
}

#[tokio::test]
async fn a_conversation_has_an_address_that_serves_the_page() {
    let app = start(true).await;
    let page = app.get("/chat/0190a0b0-0000-7000-8000-000000000000", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(header_of(&page, header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert!(page.text.contains("<script src=\"/assets/app.js\" defer></script>"));
    assert!(header_of(&page, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
    let group = app.get("/group/0190a0b0-0000-7000-8000-000000000001", None).await;
    assert_eq!(group.status, 200);
    assert!(group.text.contains("<script src=\"/assets/app.js\" defer></script>"));
    assert_eq!(app.get("/chat/a/b", None).await.status, 404);
    assert_eq!(app.get("/group/a/b", None).await.status, 404);
    app.stop().await;
}

#[tokio::test]
async fn default_avatars_are_drawn_by_the_server_itself() {
    let app = start(true).await;
    let viewer = app.create_user("viewer").await;
    let dora = app
        .register(&json!({"fullName": "Dora  de la Cruz", "username": "dora", "password": PASSWORD}))
        .await
        .data(StatusCode::CREATED)["newUser"]
        .clone();
    let id = dora["_id"].as_str().unwrap();
    let path = format!("/api/v1/user/{id}/avatar");
    assert_eq!(dora["avatar"], path.as_str(), "the default avatar is the server's own");

    let picture = app.get(&path, Some(&viewer.token)).await;
    assert_eq!(picture.status, 200, "{}", picture.text);
    assert_eq!(header_of(&picture, header::CONTENT_TYPE), "image/svg+xml");
    assert_eq!(header_of(&picture, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    assert_eq!(header_of(&picture, header::CACHE_CONTROL), "private, max-age=86400");
    let policy = header_of(&picture, header::CONTENT_SECURITY_POLICY);
    assert!(policy.contains("default-src 'none'") && policy.contains("sandbox"), "{policy}");
    assert!(picture.text.starts_with("<svg ") && picture.text.contains(">DC</text>"), "{}", picture.text);
    // The same user, the same picture; a validator makes asking again cheap.
    let etag = header_of(&picture, header::ETAG);
    assert_eq!(app.get(&path, Some(&viewer.token)).await.text, picture.text);
    let again = app
        .client
        .get(app.url(&path))
        .bearer_auth(&viewer.token)
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // Through the page's cookie too, as an <img> asks for it.
    assert_eq!(app.get_with_cookie(&path, &viewer.token).await.status, 200);
    app.get(&path, None).await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    let unknown = format!("/api/v1/user/{}/avatar", "0190a0b0-0000-7000-8000-000000000000");
    app.get(&unknown, Some(&viewer.token)).await.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let malformed = app.get("/api/v1/user/not-an-id/avatar", Some(&viewer.token)).await;
    assert_eq!(malformed.error(StatusCode::BAD_REQUEST, "VALIDATION"), "id is not a valid id");
    app.stop().await;
}

#[tokio::test]
async fn markup_in_a_name_stays_text_in_its_picture() {
    let app = start(true).await;
    let viewer = app.create_user("viewer").await;
    let eve = app
        .register(
            &json!({"fullName": "<script>x</script> & \"Eve\"", "username": "eve", "password": PASSWORD}),
        )
        .await
        .data(StatusCode::CREATED)["newUser"]["_id"]
        .clone();
    let picture =
        app.get(&format!("/api/v1/user/{}/avatar", eve.as_str().unwrap()), Some(&viewer.token)).await;
    assert_eq!(picture.status, 200);
    assert!(!picture.text.contains("<script") && !picture.text.contains("\"Eve"), "{}", picture.text);
    assert!(picture.text.contains(">E</text>"), "{}", picture.text);
    app.stop().await;
}

#[tokio::test]
async fn a_chosen_avatar_is_kept_and_a_former_outside_default_is_shown_as_the_servers_own() {
    let app = start(true).await;
    let chosen = app
        .register(&json!({"fullName": "Fay", "username": "fay", "password": PASSWORD,
            "avatar": "https://example.com/fay.png"}))
        .await
        .data(StatusCode::CREATED)["newUser"]
        .clone();
    assert_eq!(chosen["avatar"], "https://example.com/fay.png");
    // Accounts made before kept the outside service's URL as their default: it is not shown.
    let former = app
        .register(&json!({"fullName": "Gus", "username": "gus", "password": PASSWORD,
            "avatar": "https://avatar.iran.liara.run/public/boy?username=gus"}))
        .await
        .data(StatusCode::CREATED)["newUser"]
        .clone();
    let id = former["_id"].as_str().unwrap();
    assert_eq!(former["avatar"], format!("/api/v1/user/{id}/avatar").as_str());
    let viewer = app.create_user("viewer").await;
    let listed = app.other_users(&viewer.token, &[]).await;
    let listed = listed.data(StatusCode::OK).as_array().unwrap().clone();
    let gus = listed.iter().find(|u| u["username"] == "gus").expect("gus is listed");
    assert_eq!(gus["avatar"], format!("/api/v1/user/{id}/avatar").as_str());
    app.stop().await;
}

/// Installs Chromium and the Node packages once for all the scenarios of this binary.
fn install_browser_deps() {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if *installed {
        return;
    }
    let root = tests::workspace_dir();
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/install-browser-deps.sh"))
        .current_dir(&root)
        .status()
        .expect("running scripts/install-browser-deps.sh");
    assert!(status.success(), "scripts/install-browser-deps.sh failed: {status}");
    *installed = true;
}

/// Runs `tests/browser/<scenario>.test.mjs` against a server of its own; its screenshots
/// land in `tests/artifacts/browser/<scenario>/` (git-ignored). Returns that folder.
async fn run_scenario(scenario: &str) -> PathBuf {
    install_browser_deps();
    let root = tests::workspace_dir();
    let app = start(true).await;
    let artifacts = root.join("tests/artifacts/browser").join(scenario);
    // Stale screenshots of an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&artifacts);
    let run = tokio::process::Command::new("node")
        .arg(root.join(format!("tests/browser/{scenario}.test.mjs")))
        .arg(app.base_url())
        .arg(&artifacts)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting node (is Node.js installed?)");
    let output = tokio::time::timeout(BROWSER_RUN_LIMIT, run.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser scenario {scenario} ran longer than {BROWSER_RUN_LIMIT:?}"))
        .expect("waiting for node");
    app.stop().await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let summary = stdout.lines().rev().find(|line| line.ends_with(" failed"));
    let passed = summary
        .and_then(|line| line.strip_suffix(" passed, 0 failed"))
        .and_then(|count| count.parse::<u32>().ok());
    assert!(
        output.status.success() && passed.is_some_and(|n| n > 0),
        "the browser scenario {scenario} failed ({}); screenshots in {}",
        output.status,
        artifacts.display()
    );
    artifacts
}

#[tokio::test]
async fn two_people_chat_in_headless_chromium() {
    let artifacts = run_scenario("chat").await;
    assert!(
        artifacts.join("conversation.png").is_file(),
        "no screenshot of the conversation in {}",
        artifacts.display()
    );
}

#[tokio::test]
async fn three_people_chat_in_a_group_with_the_servers_read_state() {
    let artifacts = run_scenario("groups").await;
    assert!(artifacts.join("group.png").is_file(), "no screenshot of a group in {}", artifacts.display());
}

#[tokio::test]
async fn the_client_stores_each_message_once_keeps_unread_and_works_on_a_phone() {
    let artifacts = run_scenario("client").await;
    for shot in ["desktop.png", "phone-list.png", "phone-chat.png"] {
        assert!(artifacts.join(shot).is_file(), "no {shot} in {}", artifacts.display());
    }
}

#[tokio::test]
async fn messages_are_edited_deleted_reacted_to_and_answered_live_in_headless_chromium() {
    let artifacts = run_scenario("changes").await;
    for shot in ["desktop.png", "phone-chat.png"] {
        assert!(artifacts.join(shot).is_file(), "no {shot} in {}", artifacts.display());
    }
}
