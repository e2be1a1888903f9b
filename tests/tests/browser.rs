//! The built-in web client: served with the right types and policy, absent when turned off,
//! and used by two people in headless Chromium (`tests/browser/chat.test.mjs`, driven by
//! playwright-core against Debian's Chromium; `scripts/install-browser-deps.sh` installs both).

use std::process::Stdio;
use std::time::Duration;

use reqwest::header;
use tests::{Backend, Reply, TestApp};

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
async fn two_people_chat_in_headless_chromium() {
    let root = tests::workspace_dir();
    let install = tokio::process::Command::new("bash")
        .arg(root.join("scripts/install-browser-deps.sh"))
        .current_dir(&root)
        .status()
        .await
        .expect("running scripts/install-browser-deps.sh");
    assert!(install.success(), "scripts/install-browser-deps.sh failed: {install}");

    let app = start(true).await;
    let artifacts = root.join("tests/artifacts/browser");
    // Stale screenshots of an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&artifacts);
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/chat.test.mjs"))
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
        .unwrap_or_else(|_| panic!("the browser scenario ran longer than {BROWSER_RUN_LIMIT:?}"))
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
        "the browser scenario failed ({}); screenshots in {}",
        output.status,
        artifacts.display()
    );
    assert!(
        artifacts.join("conversation.png").is_file(),
        "no screenshot of the conversation in {}",
        artifacts.display()
    );
}
