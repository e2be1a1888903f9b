//! Forged and stale tokens.

use super::*;

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn forged_and_expired_tokens_are_refused() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let user = api.create_user(&unique("target")).await;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({ "sub": user.id, "jti": "0123456789abcdef", "iat": now, "exp": now + 3600 });

    // The genuine shape signed with the real secret passes: the forgeries below differ in
    // one thing each.
    let genuine = sign(jsonwebtoken::Algorithm::HS256, SECRET, &claims);
    api.get("/api/v1/user/get-profile", Some(&genuine)).await.data(StatusCode::OK);

    let payload = base64url(claims.to_string().as_bytes());
    let none_header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let forgeries = [
        ("alg none", format!("{none_header}.{payload}.")),
        ("alg none, no signature part", format!("{none_header}.{payload}")),
        ("HS512 with the real secret", sign(jsonwebtoken::Algorithm::HS512, SECRET, &claims)),
        ("HS384 with the real secret", sign(jsonwebtoken::Algorithm::HS384, SECRET, &claims)),
        (
            "another secret",
            sign(jsonwebtoken::Algorithm::HS256, "another-secret-0123456789-abcdefghijklmn", &claims),
        ),
        (
            "expired",
            sign(
                jsonwebtoken::Algorithm::HS256,
                SECRET,
                &json!({ "sub": user.id, "jti": "fedcba9876543210", "iat": now - 7200, "exp": now - 60 }),
            ),
        ),
    ];
    for (what, token) in forgeries {
        let reply = api.get("/api/v1/user/get-profile", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.text);
        reply.error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
        assert!(
            matches!(api.try_ws(&token).await, Err(WsRefused { status: Some(StatusCode::UNAUTHORIZED), .. })),
            "{what} opens a socket"
        );
    }
}
