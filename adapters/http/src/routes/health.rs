use actix_web::{web, HttpResponse};

use crate::dto::{Envelope, StatusDto};
use crate::error::ApiError;
use crate::openapi::Unavailable;
use crate::state::AppState;

/// Liveness: 200 while the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "Up: `{\"status\": \"up\"}`", body = Envelope<StatusDto>)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Envelope::data(StatusDto { status: "up" }))
}

/// 200 when every dependency answers within the readiness timeout; 503 naming those that don't.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = Envelope<StatusDto>),
        (status = 503, response = Unavailable),
    ),
)]
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
        Ok(HttpResponse::Ok().json(Envelope::data(StatusDto { status: "ready" })))
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
