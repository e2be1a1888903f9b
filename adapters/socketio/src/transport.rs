//! The `/socket.io/` route: the Engine.IO handshake, HTTP long-polling (GET to receive,
//! POST to send) and the WebSocket transport, direct or upgraded from polling.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{AUTHORIZATION, RETRY_AFTER};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use chat_realtime::handshake::{presented_token, COOKIE_NAME};
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::admission::{Address, Refusal};
use crate::engine::{Engine, Inbound, SessionHandle, Transport};
use crate::packet::{self, SinceArg, SEPARATOR};

#[derive(Deserialize)]
struct EngineQuery {
    #[serde(rename = "EIO")]
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
    token: Option<String>,
    /// Where the socket's message stream resumes, unless the CONNECT packet says.
    since: Option<String>,
}

/// Engine.IO's error answers, with its codes and messages, which clients recognise.
#[derive(Debug, Clone, Copy)]
enum EngineError {
    UnknownTransport,
    UnknownSid,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedProtocolVersion,
}

impl EngineError {
    fn response(self) -> HttpResponse {
        let (code, message) = match self {
            EngineError::UnknownTransport => (0, "Transport unknown"),
            EngineError::UnknownSid => (1, "Session ID unknown"),
            EngineError::BadHandshakeMethod => (2, "Bad handshake method"),
            EngineError::BadRequest => (3, "Bad request"),
            EngineError::UnsupportedProtocolVersion => (5, "Unsupported protocol version"),
        };
        HttpResponse::BadRequest().json(serde_json::json!({ "code": code, "message": message }))
    }
}

/// A handshake refused by the session limits. The body is Engine.IO's, with code 4
/// (`Forbidden`) and a message saying why, as engine.io answers a request its server
/// refuses; the status says whose the limit is (429: this address, 503: the whole server)
/// and `Retry-After` when to come back: when the bucket has a handshake again, or, for a
/// cap, after the connect timeout, the longest a session that never joins keeps its place.
fn refused(refusal: Refusal, connect_timeout: Duration) -> HttpResponse {
    let (status, message, retry_after) = match refusal {
        Refusal::HandshakeRate { retry_after } => {
            (StatusCode::TOO_MANY_REQUESTS, "Too many handshakes from this address", retry_after)
        }
        Refusal::AddressFull => {
            (StatusCode::TOO_MANY_REQUESTS, "Too many sessions from this address", connect_timeout)
        }
        Refusal::ServerFull => {
            (StatusCode::SERVICE_UNAVAILABLE, "Too many sessions on this server", connect_timeout)
        }
    };
    tracing::debug!(?refusal, "socket.io handshake refused");
    HttpResponse::build(status)
        .insert_header((RETRY_AFTER, retry_after.as_millis().div_ceil(1000).max(1).to_string()))
        .json(serde_json::json!({ "code": 4, "message": message }))
}

/// What a WebSocket request carries: a new session, or the upgrade of a polling one.
enum Carried {
    /// A handshake from the client `address`, with its `token` and `since`.
    New {
        address: Address,
        token: Option<String>,
        since: SinceArg,
    },
    Upgrade(Arc<SessionHandle>),
}

/// Every request to `/socket.io/`, whatever its method: Engine.IO answers in its own terms.
pub(crate) async fn endpoint(
    req: HttpRequest,
    body: web::Payload,
    engine: web::Data<Engine>,
) -> HttpResponse {
    let Ok(query) = web::Query::<EngineQuery>::from_query(req.query_string()) else {
        return EngineError::BadRequest.response();
    };
    let query = query.into_inner();
    if query.eio.as_deref() != Some("4") {
        return EngineError::UnsupportedProtocolVersion.response();
    }
    let transport = match query.transport.as_deref() {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::WebSocket,
        _ => return EngineError::UnknownTransport.response(),
    };
    let engine = engine.into_inner();
    let Some(sid) = query.sid else {
        if req.method() != Method::GET {
            return EngineError::BadHandshakeMethod.response();
        }
        let address = engine.client_address(&req);
        let token = presented_token(
            req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
            req.cookie(COOKIE_NAME).as_ref().map(|c| c.value()),
            query.token.as_deref(),
        );
        let since = packet::since_text(query.since.as_deref());
        return match transport {
            Transport::Polling => match engine.open_session(address, token, since, transport) {
                Ok(handle) => poll(&engine, &handle).await,
                Err(refusal) => refused(refusal, engine.settings.connect_timeout),
            },
            Transport::WebSocket => websocket(&req, body, &engine, Carried::New { address, token, since }),
        };
    };
    let Some(handle) = engine.session(&sid) else {
        return EngineError::UnknownSid.response();
    };
    match (transport, req.method()) {
        (Transport::Polling, &Method::GET) => poll(&engine, &handle).await,
        (Transport::Polling, &Method::POST) => post(&engine, &handle, body).await,
        (Transport::WebSocket, &Method::GET) => websocket(&req, body, &engine, Carried::Upgrade(handle)),
        _ => EngineError::BadRequest.response(),
    }
}

/// A long-polling GET: everything queued for the client, waiting for the first packet.
async fn poll(engine: &Engine, handle: &SessionHandle) -> HttpResponse {
    if handle.upgraded.load(Ordering::Acquire) {
        return EngineError::BadRequest.response();
    }
    let Ok(mut outbox) = handle.outbox.try_lock() else {
        // Engine.IO allows one pending GET per session; a second one is a broken client,
        // unless the WebSocket just took over.
        if !handle.upgraded.load(Ordering::Acquire) {
            let _ = handle.inbound.try_send(Inbound::Closed("overlapping polls"));
        }
        return EngineError::BadRequest.response();
    };
    let body =
        outbox.next_batch(engine.settings.max_payload).await.unwrap_or_else(|| packet::CLOSE.to_owned());
    HttpResponse::Ok().content_type("text/plain; charset=UTF-8").body(body)
}

/// A long-polling POST: packets from the client, separated by `\x1e`.
async fn post(engine: &Engine, handle: &SessionHandle, mut body: web::Payload) -> HttpResponse {
    if handle.upgraded.load(Ordering::Acquire) {
        return EngineError::BadRequest.response();
    }
    let limit = engine.settings.max_payload;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return EngineError::BadRequest.response();
        };
        if bytes.len() + chunk.len() > limit {
            let _ = handle.inbound.try_send(Inbound::Closed("payload too large"));
            return HttpResponse::build(StatusCode::PAYLOAD_TOO_LARGE)
                .json(serde_json::json!({ "code": 3, "message": "Payload too large" }));
        }
        bytes.extend_from_slice(&chunk);
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        let _ = handle.inbound.try_send(Inbound::Closed("payload is not UTF-8"));
        return EngineError::BadRequest.response();
    };
    for packet in text.split(SEPARATOR) {
        if handle.inbound.send(Inbound::Packet(packet.to_owned())).await.is_err() {
            return EngineError::UnknownSid.response();
        }
    }
    HttpResponse::Ok().content_type("text/html").body("ok")
}

/// The WebSocket transport: a new session or the upgrade of a polling one. The connection
/// runs on this worker (actix-ws's stream is not `Send`).
fn websocket(req: &HttpRequest, body: web::Payload, engine: &Arc<Engine>, carried: Carried) -> HttpResponse {
    if let Carried::Upgrade(handle) = &carried {
        if handle.upgraded.load(Ordering::Acquire) || handle.upgrading.swap(true, Ordering::AcqRel) {
            return EngineError::BadRequest.response();
        }
    }
    let (response, session, stream) = match actix_ws::handle(req, body) {
        Ok(parts) => parts,
        Err(_) => {
            if let Carried::Upgrade(handle) = &carried {
                handle.upgrading.store(false, Ordering::Release);
            }
            return EngineError::BadRequest.response();
        }
    };
    let stream = stream.max_frame_size(engine.settings.max_payload);
    // A refused handshake answers before the switch of protocols: the 101 is not sent.
    let (handle, upgrade) = match carried {
        Carried::Upgrade(handle) => (handle, true),
        Carried::New { address, token, since } => {
            match engine.open_session(address, token, since, Transport::WebSocket) {
                Ok(handle) => (handle, false),
                Err(refusal) => return refused(refusal, engine.settings.connect_timeout),
            }
        }
    };
    actix_web::rt::spawn(carry(engine.clone(), handle, session, stream, upgrade));
    response
}

/// Moves packets between one WebSocket and its session until either ends.
async fn carry(
    engine: Arc<Engine>,
    handle: Arc<SessionHandle>,
    mut session: Session,
    mut stream: MessageStream,
    upgrade: bool,
) {
    let timeout = engine.settings.upgrade_timeout;
    if upgrade {
        // Boxed, as the waits below: the task then holds only the loop's state for as long as
        // the socket stays open.
        let probed = Box::pin(tokio::time::timeout(timeout, probe(&mut session, &mut stream, &handle))).await;
        if !matches!(probed, Ok(true)) {
            // The session goes on over polling.
            handle.upgrading.store(false, Ordering::Release);
            let _ = Box::pin(tokio::time::timeout(timeout, session.close(None))).await;
            return;
        }
        handle.upgraded.store(true, Ordering::Release);
    }
    // The pending poll, if any, was released by the probe's noop and returns at once.
    let Ok(mut outbox) = Box::pin(tokio::time::timeout(timeout, handle.outbox.lock())).await else {
        let _ = handle.inbound.try_send(Inbound::Closed("upgrade stalled"));
        let _ = Box::pin(tokio::time::timeout(timeout, session.close(None))).await;
        return;
    };

    let close = loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if Box::pin(handle.inbound.send(Inbound::Packet(text.to_string()))).await.is_err() {
                        break Some(CloseReason { code: CloseCode::Normal, description: None });
                    }
                }
                Some(Ok(Message::Ping(bytes))) => {
                    if Box::pin(session.pong(&bytes)).await.is_err() {
                        let _ = Box::pin(handle.inbound.send(Inbound::Closed("transport closed"))).await;
                        break None;
                    }
                }
                Some(Ok(Message::Pong(_) | Message::Nop)) => {}
                Some(Ok(Message::Binary(_) | Message::Continuation(_))) => {
                    let _ = Box::pin(handle.inbound.send(Inbound::Closed("binary frame"))).await;
                    break Some(CloseReason {
                        code: CloseCode::Unsupported,
                        description: Some("binary data is not supported".into()),
                    });
                }
                Some(Ok(Message::Close(_))) | None => {
                    let _ = Box::pin(handle.inbound.send(Inbound::Closed("transport closed"))).await;
                    break None;
                }
                Some(Err(error)) => {
                    tracing::debug!(error = %error, "socket.io websocket protocol error");
                    let _ = Box::pin(handle.inbound.send(Inbound::Closed("websocket protocol error"))).await;
                    break Some(CloseReason {
                        code: CloseCode::Size,
                        description: Some("frame too large or malformed".into()),
                    });
                }
            },
            packet = outbox.next() => match packet {
                Some(packet) => {
                    if Box::pin(session.text(packet)).await.is_err() {
                        let _ = Box::pin(handle.inbound.send(Inbound::Closed("transport closed"))).await;
                        break None;
                    }
                }
                None => break Some(CloseReason { code: CloseCode::Normal, description: None }),
            },
        }
    };
    if let Some(reason) = close {
        // A client that doesn't read may never take the close frame either.
        let _ = Box::pin(tokio::time::timeout(timeout, session.close(Some(reason)))).await;
    }
}

/// The upgrade handshake: `2probe` answered with `3probe`, then the client's `5`.
async fn probe(session: &mut Session, stream: &mut MessageStream, handle: &SessionHandle) -> bool {
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(Message::Text(text)) if &*text == packet::PROBE_PING => {
                if session.text(packet::PROBE_PONG).await.is_err()
                    || handle.inbound.send(Inbound::Probe).await.is_err()
                {
                    return false;
                }
            }
            Ok(Message::Text(text)) if &*text == packet::UPGRADE => return true,
            Ok(Message::Ping(bytes)) => {
                if session.pong(&bytes).await.is_err() {
                    return false;
                }
            }
            Ok(Message::Pong(_) | Message::Nop) => {}
            _ => return false,
        }
    }
    false
}
