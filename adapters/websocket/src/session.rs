//! The native WebSocket endpoint: JSON text frames `{"event": name, "data": payload}`.
//!
//! Each connection is one task on the actix worker that accepted it (actix-ws's stream is
//! not `Send`), running one `select!` over the client's frames, its own event queue, the
//! replay of its message stream, a heartbeat tick and its token's expiry. A revoked token
//! ends it through the registry (see [`crate::registry::Ended`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use application::{MessagingService, RealtimeService};
use domain::{Cursor, UserId};
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::budget::FrameBudget;
use crate::follow::{Follow, Stop};
use crate::registry::{ConnectionGuard, ConnectionRegistry, Ended, Outbound, Refusal, SessionToken};
use crate::wire::{self, names, TypingIn};

/// The close code telling a client its stream must be resumed: reconnect with `since` set
/// to the last cursor processed.
pub const RESYNC_CLOSE_CODE: u16 = 4000;
/// Close code when `since` lies beyond the end of the user's stream: start over from 0.
pub const AHEAD_CLOSE_CODE: u16 = 4001;

#[derive(Debug, Clone)]
pub struct WsSettings {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A client silent for this long (no frame, no pong) is disconnected; so is one that
    /// takes no frame for this long.
    pub ping_timeout: Duration,
    /// Largest frame (and reassembled message) a client may send.
    pub max_frame_bytes: usize,
    /// Frames per second a client may send (averaged over a burst of as many); 0: no limit.
    pub max_frames_per_second: u32,
}

/// Who connects, authenticated by the caller with `token`, and where their stream resumes:
/// after `since`, or from now on without it.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub user: UserId,
    pub token: SessionToken,
    pub since: Option<Cursor>,
}

/// A client frame. Unknown events are ignored, so clients can be newer than the server.
#[derive(Deserialize)]
struct Incoming {
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// Upgrades the request and serves the connection in the background: the stored messages
/// of the user's stream after `since` first, then live events.
pub fn serve(
    req: &HttpRequest,
    body: actix_web::web::Payload,
    handshake: Handshake,
    registry: Arc<ConnectionRegistry>,
    realtime: Arc<RealtimeService>,
    messaging: Arc<MessagingService>,
    settings: WsSettings,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(req, body)?;
    let stream = stream.max_frame_size(settings.max_frame_bytes);
    actix_web::rt::spawn(async move {
        let Handshake { user, token, since } = handshake;
        // Before the registration: whatever is stored from here on reaches the replay.
        let follow = match Follow::start(messaging, user.clone(), since).await {
            Ok(follow) => follow,
            Err(stop) => {
                tracing::warn!(error = %stop, "a connection's stream could not be started");
                return close_now(session, stop_reason(&stop)).await;
            }
        };
        let (guard, queue) = match registry.register(&user, &token) {
            Ok(registered) => registered,
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::ShuttingDown => going_away(),
                    Refusal::TooManyConnections { .. } => policy(refusal.to_string()),
                    Refusal::Revoked => ended(Ended::Revoked),
                };
                return close_now(session, reason).await;
            }
        };
        run(session, stream, guard, queue, follow, realtime, settings, token.deadline()).await;
    });
    Ok(response)
}

async fn close_now(session: Session, reason: CloseReason) {
    let _ = tokio::time::timeout(Duration::from_secs(1), session.close(Some(reason))).await;
}

#[allow(clippy::too_many_arguments)] // one connection's parts, each used once
async fn run(
    mut session: Session,
    mut stream: MessageStream,
    guard: ConnectionGuard,
    mut queue: crate::Receiver,
    mut follow: Follow,
    realtime: Arc<RealtimeService>,
    settings: WsSettings,
    expiry: tokio::time::Instant,
) {
    let user = guard.user().clone();
    match realtime.connection_opened(&user).await {
        Ok(Some(online)) => {
            let event = application::ports::Event::OnlineUsers(online);
            for (name, data) in wire::encode_event(&event) {
                if session.text(wire::native_frame(name, &data)).await.is_err() {
                    return finish(guard, &realtime).await;
                }
            }
        }
        Ok(None) => {}
        Err(error) => tracing::warn!(error = %error, "presence unavailable for a new connection"),
    }

    let mut heartbeat = tokio::time::interval(settings.ping_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut budget = FrameBudget::new(settings.max_frames_per_second);

    let close = loop {
        tokio::select! {
            incoming = stream.next() => {
                last_heard = Instant::now();
                if !budget.take(last_heard) {
                    break Some(CloseReason {
                        code: CloseCode::Policy,
                        description: Some("too many frames per second".into()),
                    });
                }
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = handle_text(&text, &user, &realtime).await {
                            if session.text(reply).await.is_err() { break None; }
                        }
                    }
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() { break None; }
                    }
                    Some(Ok(Message::Pong(_) | Message::Nop)) => {}
                    Some(Ok(Message::Binary(_) | Message::Continuation(_))) => {
                        break Some(CloseReason {
                            code: CloseCode::Unsupported,
                            description: Some("only JSON text frames are accepted".into()),
                        });
                    }
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(error)) => {
                        tracing::debug!(error = %error, "websocket protocol error");
                        break Some(CloseReason {
                            code: CloseCode::Size,
                            description: Some("frame too large or malformed".into()),
                        });
                    }
                }
            }
            // One page of the replay per turn, so the client's frames and the queue are
            // served in between.
            () = std::future::ready(()), if follow.replaying() => {
                let sent = match follow.replay().await {
                    Ok(frames) => send_all(&mut session, &guard, frames, settings.ping_timeout).await,
                    Err(stop) => Err(stopped(&stop)),
                };
                if let Err(close) = sent { break close; }
            }
            outbound = queue.recv() => match outbound {
                Some(outbound) => {
                    let sent = match follow.admit(outbound).await {
                        Ok(frames) => send_all(&mut session, &guard, frames, settings.ping_timeout).await,
                        Err(stop) => Err(stopped(&stop)),
                    };
                    if let Err(close) = sent { break close; }
                }
                None => break Some(guard.end().map_or_else(going_away, ended)),
            },
            () = tokio::time::sleep_until(expiry) => break Some(expired()),
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > settings.ping_timeout {
                    break Some(CloseReason {
                        code: CloseCode::Policy,
                        description: Some("heartbeat timeout".into()),
                    });
                }
                if session.ping(b"").await.is_err() { break None; }
            }
        }
    };
    if let Some(reason) = close {
        // A client that doesn't read may never take the close frame either.
        let _ = tokio::time::timeout(Duration::from_secs(1), session.close(Some(reason))).await;
    }
    finish(guard, &realtime).await;
}

/// Sends `frames` in order. `Err(None)`: the connection is gone; `Err(Some(_))`: close it.
async fn send_all(
    session: &mut Session,
    guard: &ConnectionGuard,
    frames: Vec<Outbound>,
    stall: Duration,
) -> Result<(), Option<CloseReason>> {
    for Outbound { name, data, .. } in frames {
        // A client that stops reading blocks this send: its queue then fills and the
        // registry evicts it, which ends the wait (as does a revocation); without events to
        // fill it, the wait ends after `stall`.
        tokio::select! {
            sent = tokio::time::timeout(stall, session.text(wire::native_frame(name, &data))) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => return Err(None),
                Err(_stalled) => return Err(Some(ended(Ended::TooSlow))),
            },
            why = guard.ended() => return Err(Some(ended(why))),
        }
    }
    Ok(())
}

fn stopped(stop: &Stop) -> Option<CloseReason> {
    match stop {
        Stop::Storage(error) => tracing::warn!(error = %error, "a connection's stream could not be read"),
        Stop::Resync { announced } => {
            tracing::info!(%announced, "closing a connection that cannot follow its stream")
        }
        Stop::Ahead { .. } => tracing::info!(error = %stop, "refusing a resume beyond the stream"),
    }
    Some(stop_reason(stop))
}

/// 1011 when the store failed, [`RESYNC_CLOSE_CODE`] when the stream must be resumed,
/// [`AHEAD_CLOSE_CODE`] when it must be started over.
fn stop_reason(stop: &Stop) -> CloseReason {
    let code = match stop {
        Stop::Storage(_) => CloseCode::Error,
        Stop::Resync { .. } => CloseCode::Other(RESYNC_CLOSE_CODE),
        Stop::Ahead { .. } => CloseCode::Other(AHEAD_CLOSE_CODE),
    };
    CloseReason { code, description: Some(stop.reason().into()) }
}

async fn finish(guard: ConnectionGuard, realtime: &RealtimeService) {
    let user = guard.user().clone();
    drop(guard);
    if let Err(error) = realtime.connection_closed(&user).await {
        tracing::warn!(error = %error, "presence not updated for a closed connection");
    }
}

/// Handles one client frame; returns an error frame for the client when it was unusable.
async fn handle_text(text: &str, user: &UserId, realtime: &RealtimeService) -> Option<String> {
    let incoming: Incoming = match serde_json::from_str(text) {
        Ok(incoming) => incoming,
        Err(_) => return Some(error_frame("frames must be JSON: {\"event\": name, \"data\": payload}")),
    };
    match incoming.event.as_str() {
        names::TYPING => match serde_json::from_value::<TypingIn>(incoming.data) {
            Ok(typing) => {
                realtime.typing(user, &typing.to, typing.is_typing).await;
                None
            }
            Err(_) => Some(error_frame("typing needs data {\"to\": userId, \"isTyping\": bool}")),
        },
        _ => None,
    }
}

fn error_frame(message: &str) -> String {
    let data = serde_json::json!({ "code": "VALIDATION", "errMessage": message });
    wire::native_frame("error", &data.to_string())
}

/// 1008 (policy) with `why`.
fn policy(why: String) -> CloseReason {
    CloseReason { code: CloseCode::Policy, description: Some(why) }
}

/// The registry ended the connection: 1008 with the reason.
fn ended(why: Ended) -> CloseReason {
    policy(why.reason().into())
}

fn expired() -> CloseReason {
    policy("session ended: the token expired".into())
}

fn going_away() -> CloseReason {
    CloseReason { code: CloseCode::Away, description: Some("server shutting down".into()) }
}
