//! The route table and the middleware around it.

pub(crate) mod avatar;
pub(crate) mod changes;
pub(crate) mod conversations;
pub(crate) mod health;
pub(crate) mod message;
pub(crate) mod user;
mod ws;

use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{self, DefaultHeaders, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, Resource, ResponseError as _};

use crate::error::ApiError;
use crate::origin::OriginPolicy;
use crate::state::AppState;

/// The whole HTTP application over `state`, as the listener ([`crate::serve`]) runs it.
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let body_limit = state.settings.body_limit;
    let web_client = state.settings.web_client;
    let metrics = state.settings.metrics;
    let cors = cors(&state.settings.cors_origins);
    let origins = web::Data::new(OriginPolicy::new(&state.settings.cors_origins));
    let transports = state.clone();
    App::new()
        .app_data(state)
        .app_data(origins)
        .app_data(
            web::JsonConfig::default()
                .limit(body_limit)
                // A body an HTML form can send cross-site (text/plain, form encodings) or one
                // without a type is refused: only a script allowed by CORS can send JSON.
                .content_type_required(true)
                .error_handler(move |error, _| json_error(error, body_limit).into()),
        )
        .app_data(web::PayloadConfig::default().limit(body_limit))
        .app_data(web::QueryConfig::default().error_handler(|error, _| query_error(error).into()))
        .app_data(web::PathConfig::default().error_handler(|error, _| path_error(error).into()))
        .wrap(middleware::from_fn(crate::connections::body_deadline))
        .wrap(middleware::from_fn(crate::origin::guard))
        .wrap(middleware::from_fn(access_log))
        .wrap(middleware::Condition::new(metrics, middleware::from_fn(crate::metrics::track)))
        .wrap(cors)
        .wrap(
            DefaultHeaders::new()
                .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                .add((header::X_FRAME_OPTIONS, "DENY"))
                .add((header::REFERRER_POLICY, "no-referrer"))
                .add((header::CACHE_CONTROL, "no-store")),
        )
        .service(resource("/healthz", "GET").route(web::get().to(health::healthz)))
        .service(resource("/readyz", "GET").route(web::get().to(health::readyz)))
        .configure(|config| {
            // Off: `/metrics` is an unknown path (404) like any other.
            if metrics {
                config.service(resource("/metrics", "GET").route(web::get().to(crate::metrics::render)));
            }
        })
        .service(resource("/ws", "GET").route(web::get().to(ws::upgrade)))
        // The OpenAPI document of the routes below, and a page rendering it.
        .service(
            resource("/api-docs/openapi.json", "GET").route(web::get().to(crate::openapi::serve_document)),
        )
        .service(resource("/api-docs/", "GET").route(web::get().to(crate::openapi::serve_page)))
        .configure(crate::openapi::configure_assets)
        .service(resource("/api-docs", "GET").route(web::get().to(crate::openapi::serve_page)))
        .configure(|config| {
            if web_client {
                crate::web::configure(config);
            }
        })
        // Engine.IO answers every method and error in its own terms, inside the same CORS.
        .configure(|config| (transports.transports.socketio)(config))
        .service(
            web::scope("/api/v1")
                .service(
                    web::scope("/user")
                        .service(resource("/register", "POST").route(web::post().to(user::register)))
                        .service(resource("/login", "POST").route(web::post().to(user::login)))
                        .service(resource("/logout", "POST").route(web::post().to(user::logout)))
                        .service(resource("/get-profile", "GET").route(web::get().to(user::profile)))
                        .service(resource("/get-other-users", "GET").route(web::get().to(user::other_users)))
                        .service(resource("/online", "GET").route(web::get().to(user::online)))
                        .service(resource("/{id}/avatar", "GET").route(web::get().to(avatar::avatar)))
                        // After the named routes, which take their names first.
                        .service(resource("/{id}", "GET").route(web::get().to(user::user))),
                )
                .service(
                    web::scope("/message")
                        .service(resource("/send/{receiver_id}", "POST").route(web::post().to(message::send)))
                        .service(
                            resource("/get-messages/{other_id}", "GET")
                                .route(web::get().to(message::history)),
                        )
                        .service(
                            resource("/conversations", "GET").route(web::get().to(message::conversations)),
                        )
                        .service(resource("/sync", "GET").route(web::get().to(message::sync))),
                )
                .service(web::scope("/conversations").configure(conversation_routes)),
        )
        .default_service(web::to(not_found))
}

/// `/api/v1/conversations/…`: groups, and conversations of both kinds by id.
fn conversation_routes(config: &mut web::ServiceConfig) {
    use conversations as c;
    config
        .service(resource("", "POST").route(web::post().to(c::create)))
        .service(
            resource("/{id}", "GET, PATCH").route(web::get().to(c::get)).route(web::patch().to(c::rename)),
        )
        .service(resource("/{id}/members", "POST").route(web::post().to(c::add_members)))
        .service(resource("/{id}/members/{user_id}", "DELETE").route(web::delete().to(c::remove_member)))
        .service(resource("/{id}/members/{user_id}/role", "PUT").route(web::put().to(c::set_role)))
        .service(resource("/{id}/owner", "POST").route(web::post().to(c::transfer_ownership)))
        .service(resource("/{id}/leave", "POST").route(web::post().to(c::leave)))
        .service(
            resource("/{id}/messages", "GET, POST")
                .route(web::get().to(c::history))
                .route(web::post().to(c::send)),
        )
        .service(resource("/{id}/read", "POST").route(web::post().to(c::mark_read)))
        .service(
            resource("/{id}/messages/{message_id}", "PATCH, DELETE")
                .route(web::patch().to(changes::edit))
                .route(web::delete().to(changes::delete)),
        )
        .service(
            resource("/{id}/messages/{message_id}/reactions/{emoji}", "PUT, DELETE")
                .route(web::put().to(changes::react))
                .route(web::delete().to(changes::unreact)),
        );
}

/// A resource that answers methods other than `allow` (its routes' methods, comma-separated)
/// with the envelope and an `Allow` header (RFC 9110) rather than a bare 405.
fn resource(path: &str, allow: &'static str) -> Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut response = ApiError::method_not_allowed().error_response();
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        response
    }))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    let method = crate::metrics::method_label(req.method());
    ApiError::not_found(format!("no route for {method} {}", req.path())).error_response()
}

fn cors(origins: &[String]) -> Cors {
    // Closed by default: without configured origins, browsers on other origins get nothing.
    origins.iter().fold(
        Cors::default()
            .allowed_methods(["GET", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"])
            .allowed_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::ACCEPT,
                header::HeaderName::from_static(message::IDEMPOTENCY_KEY),
            ])
            .supports_credentials()
            .max_age(3600),
        |cors, origin| cors.allowed_origin(origin),
    )
}

/// One line per request. The query string is left out: it may carry a token; a method that
/// is not one of HTTP's own is logged as `OTHER` (clients choose it, of any length).
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = crate::metrics::method_label(req.method());
    let path = req.path().to_owned();
    let response = next.call(req).await;
    let status = match &response {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    tracing::info!(
        method,
        path = %path,
        status,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

fn json_error(error: JsonPayloadError, limit: usize) -> ApiError {
    match error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::payload_too_large(limit)
        }
        JsonPayloadError::Payload(e) if crate::connections::is_body_timeout(&e) => {
            ApiError::request_timeout()
        }
        JsonPayloadError::Deserialize(e) => ApiError::validation(format!("invalid JSON body: {e}")),
        JsonPayloadError::ContentType => ApiError::unsupported_media_type(),
        _ => ApiError::validation("invalid JSON body"),
    }
}

fn query_error(error: QueryPayloadError) -> ApiError {
    match error {
        QueryPayloadError::Deserialize(e) => ApiError::validation(format!("invalid query: {e}")),
        _ => ApiError::validation("invalid query"),
    }
}

fn path_error(error: PathError) -> ApiError {
    match error {
        PathError::Deserialize(e) => ApiError::validation(format!("invalid path: {e}")),
        _ => ApiError::validation("invalid path"),
    }
}

/// A required body field, or the 400 naming it: an empty string is as missing as no field.
fn required<'a>(value: &'a Option<String>, field: &'static str) -> Result<&'a str, ApiError> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| ApiError::invalid_field(field, "is required"))
}
