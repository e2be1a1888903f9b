//! The native WebSocket endpoint: JSON text frames `{"event": name, "data": payload}`.
//!
//! Each connection is one task on the actix worker that accepted it (actix-ws's stream is
//! not `Send`), running one `select!` over the client's frames, its own event queue, the
//! replay of its message stream, a heartbeat tick and its token's expiry. A revoked token
//! ends it through the registry (see [`chat_realtime::Ended`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use application::FollowError;
use chat_realtime::wire;
use chat_realtime::{stop_reason, ConnectionGuard, Ended, Handshake, Hub, Live, Outbound, Refusal, Refused};
use domain::UserId;
use futures_util::StreamExt as _;
use serde::Deserialize;

/// The close code telling a client its stream must be resumed: reconnect with `since` set
/// to the last cursor processed.
pub const RESYNC_CLOSE_CODE: u16 = 4000;
/// Close code when `since` is no cursor the user can resume from (it lies beyond the end of
/// their stream or of a group's entries, or names other groups than theirs at that point):
/// start over from 0.
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

/// A client frame. Unknown events are ignored, so clients can be newer than the server.
#[derive(Deserialize)]
struct Incoming {
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// Upgrades the request and serves the connection in the background: the stored messages
/// of the user's stream after `since` first, then live events.
///
/// The connection starts following its stream, and is registered for live events, before
/// the upgrade is answered: without `since`, everything stored after the client saw the
/// socket open reaches it (a store that cannot say where the stream stands delays the
/// answer by `application::stream::ANCHOR_DEADLINE` at most, see `StreamFollower`).
pub async fn serve(
    req: HttpRequest,
    body: actix_web::web::Payload,
    handshake: Handshake,
    hub: Arc<Hub>,
    settings: WsSettings,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(settings.max_frame_bytes);
    match hub.connect(handshake).await {
        Ok(live) => actix_web::rt::spawn(run(session, stream, live, hub, settings)),
        Err(refused) => actix_web::rt::spawn(close_now(session, refusal(refused))),
    };
    Ok(response)
}

/// Why a connection the hub refused is closed.
fn refusal(refused: Refused) -> CloseReason {
    match refused {
        Refused::Stream(stop) => stopped(&stop),
        Refused::Registry(Refusal::ShuttingDown) => ended(Ended::ShuttingDown),
        Refused::Registry(refusal @ Refusal::TooManyConnections { .. }) => policy(refusal.to_string()),
        Refused::Registry(Refusal::Revoked) => ended(Ended::Revoked),
    }
}

async fn close_now(session: Session, reason: CloseReason) {
    let _ = tokio::time::timeout(Duration::from_secs(1), session.close(Some(reason))).await;
}

/// Serves the connection until it ends, then tells the hub.
///
/// A plain function returning the task: the connection's state is taken apart here, and the
/// task holds each part once (an `async fn` would also keep the arguments it was given).
/// Every await in the task that is not waiting on the client or the queue is boxed, so an
/// idle socket's task holds only the loop's own state.
fn run(
    mut session: Session,
    mut stream: MessageStream,
    live: Live,
    hub: Arc<Hub>,
    settings: WsSettings,
) -> impl Future<Output = ()> {
    let Live { guard, mut queue, mut follow, expiry } = live;
    follow.track(guard.position());
    let user = guard.user().clone();
    // The first ping one interval after the connection opened, not at once: the first frames
    // a client gets are the presence list and its stream.
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut budget = chat_realtime::FrameBudget::new(settings.max_frames_per_second);
    async move {
        let presence = Box::pin(hub.opened(&user)).await;
        let close = match Box::pin(send_all(&mut session, &guard, presence, settings.ping_timeout)).await {
            Err(close) => close,
            Ok(()) => loop {
                tokio::select! {
                    incoming = stream.next() => {
                        last_heard = Instant::now();
                        if !budget.take(last_heard) {
                            break Some(policy("too many frames per second".into()));
                        }
                        match incoming {
                            Some(Ok(Message::Text(text))) => {
                                if let Some(reply) = Box::pin(handle_text(&text, &user, &hub)).await {
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
                        let sent = match Box::pin(follow.replay()).await {
                            Ok(frames) => Box::pin(send_all(&mut session, &guard, frames, settings.ping_timeout)).await,
                            Err(stop) => Err(Some(stopped(&stop))),
                        };
                        if let Err(close) = sent { break close; }
                    }
                    outbound = queue.recv() => match outbound {
                        Some(outbound) => {
                            let sent = match Box::pin(follow.admit(outbound)).await {
                                Ok(frames) => Box::pin(send_all(&mut session, &guard, frames, settings.ping_timeout)).await,
                                Err(stop) => Err(Some(stopped(&stop))),
                            };
                            if let Err(close) = sent { break close; }
                        }
                        None => break Some(ended(guard.end())),
                    },
                    () = tokio::time::sleep_until(expiry) => break Some(ended(Ended::Expired)),
                    _ = heartbeat.tick() => {
                        if last_heard.elapsed() > settings.ping_timeout {
                            break Some(policy("heartbeat timeout".into()));
                        }
                        if session.ping(b"").await.is_err() { break None; }
                    }
                }
            },
        };
        if let Some(reason) = close {
            // A client that doesn't read may never take the close frame either.
            let _ = tokio::time::timeout(Duration::from_secs(1), session.close(Some(reason))).await;
        }
        Box::pin(hub.closed(guard)).await;
    }
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

/// Logs why the stream stopped, and closes with 1011 when the store failed,
/// [`RESYNC_CLOSE_CODE`] when the stream must be resumed, [`AHEAD_CLOSE_CODE`] when it must
/// be started over.
fn stopped(stop: &FollowError) -> CloseReason {
    chat_realtime::log_stop(stop);
    let code = match stop {
        FollowError::Storage(_) => CloseCode::Error,
        _ if chat_realtime::starts_over(stop) => CloseCode::Other(AHEAD_CLOSE_CODE),
        _ => CloseCode::Other(RESYNC_CLOSE_CODE),
    };
    CloseReason { code, description: Some(stop_reason(stop).into()) }
}

/// Handles one client frame; returns an error frame for the client when it was unusable.
async fn handle_text(text: &str, user: &UserId, hub: &Hub) -> Option<String> {
    let Ok(Incoming { event, data }) = serde_json::from_str(text) else {
        return Some(error_frame("frames must be JSON: {\"event\": name, \"data\": payload}"));
    };
    hub.client_event(user, &event, data).await.err().map(|invalid| error_frame(invalid.0))
}

fn error_frame(message: &str) -> String {
    let data = serde_json::json!({ "code": "VALIDATION", "errMessage": message });
    wire::native_frame("error", &data.to_string())
}

/// 1008 (policy) with `why`.
fn policy(why: String) -> CloseReason {
    CloseReason { code: CloseCode::Policy, description: Some(why) }
}

/// The server ends the connection: 1001 (going away) when it shuts down, otherwise 1008
/// with the reason.
fn ended(why: Ended) -> CloseReason {
    match why {
        Ended::ShuttingDown => CloseReason { code: CloseCode::Away, description: Some(why.reason().into()) },
        _ => policy(why.reason().into()),
    }
}
