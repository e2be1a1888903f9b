use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn healthz_answers_200() {
    let app = spawn_app().await;

    let response = app.get("/healthz", None).await;

    assert_eq!(response.data(StatusCode::OK), &json!({ "status": "up" }));
}

#[tokio::test]
async fn readyz_answers_200_when_storage_answers() {
    let app = spawn_app().await;

    let response = app.get("/readyz", None).await;

    assert_eq!(response.data(StatusCode::OK), &json!({ "status": "ready" }));
}

#[tokio::test]
async fn an_unknown_route_is_a_404_envelope() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    // (`/api/v1/user/<text>` is a user by id: text that is no id is a 400 there.)
    for path in
        ["/nope", "/api/v1/user", "/api/v1/user/a/b", "/api/v2/user/get-profile", "/api/v1/message/send"]
    {
        let response = app.get(path, Some(&ada.token)).await;
        response.error(StatusCode::NOT_FOUND, "NOT_FOUND");
    }
    let response = app.post_json("/api/v1/nothing", &json!({}), None).await;
    response.error(StatusCode::NOT_FOUND, "NOT_FOUND");
}

#[tokio::test]
async fn a_wrong_method_is_a_405_envelope() {
    let app = spawn_app().await;
    let ada = app.create_user("ada").await;
    let cases = [
        (Method::GET, "/api/v1/user/register".to_owned()),
        (Method::GET, "/api/v1/user/login".to_owned()),
        (Method::GET, "/api/v1/user/logout".to_owned()),
        (Method::POST, "/api/v1/user/get-profile".to_owned()),
        (Method::DELETE, "/api/v1/user/get-other-users".to_owned()),
        (Method::GET, format!("/api/v1/message/send/{}", ada.id)),
        (Method::PUT, "/api/v1/message/conversations".to_owned()),
        (Method::POST, "/healthz".to_owned()),
        (Method::DELETE, "/readyz".to_owned()),
    ];
    for (method, path) in cases {
        let response = app.execute(app.request(method.clone(), &path, Some(&ada.token))).await;
        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {}", response.text);
        response.error(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED");
    }
}
