//! Secrets never reach the log.

use super::*;

#[tokio::test]
async fn passwords_tokens_and_hashes_never_reach_the_log() {
    let dir = TempDir::new("hardening");
    let storage = format!("sqlite://{}", dir.path().join("chat.db").display());
    let mut process = ServerProcess::start(&[("CHAT__STORAGE__URL", &storage), ("RUST_LOG", "debug")]).await;
    let api = process.api();
    let password = "Sup3r-Secret-Passw0rd!";
    let username = unique("logged");

    let reply = api
        .post_json(
            "/api/v1/user/register",
            &json!({ "fullName": "Logged TestUser", "username": username, "password": password }),
            None,
        )
        .await;
    let register_token = reply.data(StatusCode::CREATED)["token"].as_str().unwrap().to_owned();
    let reply = api.login(&username, password).await;
    let token = reply.data(StatusCode::OK)["token"].as_str().unwrap().to_owned();
    api.login(&username, "a wrong password here").await.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
    api.get("/api/v1/user/get-profile", Some(&token)).await.data(StatusCode::OK);
    api.get_with_cookie("/api/v1/user/get-profile", &token).await.data(StatusCode::OK);
    let mut ws = api.connect_ws(&token).await;
    let _ = ws.stream.close(None).await;
    api.logout(&token).await.data(StatusCode::OK);
    api.get("/api/v1/user/get-profile", Some(&token))
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");

    // The requests were logged at all (the check below is not vacuous).
    let deadline = Instant::now() + WAIT;
    while !process.log().contains("/api/v1/user/logout") {
        assert!(Instant::now() < deadline, "no access log line for logout:\n{}", process.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    process.kill().await;
    let log = process.log();
    assert!(log.contains("DEBUG"), "debug logging was on");
    assert!(log.contains("/api/v1/user/get-profile"), "requests are logged");
    for (what, secret) in [
        ("the password", password),
        ("the wrong password", "a wrong password here"),
        ("the login token", token.as_str()),
        ("the register token", register_token.as_str()),
        ("a token's signature", token.rsplit('.').next().unwrap()),
        ("a bcrypt hash", "$2b$"),
        ("a bcrypt hash", "$2a$"),
        ("the secret", SECRET),
    ] {
        assert!(!log.contains(secret), "{what} is in the log:\n{log}");
    }
}
