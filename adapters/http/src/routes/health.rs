use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::dto::Envelope;
use crate::error::ApiError;
use crate::state::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Envelope::data(json!({ "status": "up" })))
}

/// 200 when every dependency answers within the readiness timeout; 503 naming those that don't.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let timeout = state.settings.readiness_timeout;
    let mut down = Vec::new();
    for (name, check) in &state.health {
        let answered = matches!(tokio_timeout(timeout, check.ping()).await, Some(Ok(())));
        if !answered {
            down.push(*name);
        }
    }
    if down.is_empty() {
        Ok(HttpResponse::Ok().json(Envelope::data(json!({ "status": "ready" }))))
    } else {
        Err(ApiError::unavailable(&anyhow::anyhow!("not ready: {}", down.join(", "))))
    }
}

async fn tokio_timeout<T>(
    timeout: std::time::Duration,
    future: impl std::future::Future<Output = T>,
) -> Option<T> {
    actix_web::rt::time::timeout(timeout, future).await.ok()
}
