//! The native WebSocket endpoint: JSON text frames `{"event": name, "data": payload}`.
//!
//! Each connection is one task on the actix worker that accepted it (actix-ws's stream is
//! not `Send`), running one `select!` over the client's frames, its own event queue and a
//! heartbeat tick.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use application::RealtimeService;
use domain::UserId;
use futures_util::StreamExt as _;
use serde::Deserialize;

use crate::registry::{ConnectionGuard, ConnectionRegistry, Outbound, Refusal};
use crate::wire::{self, names, TypingIn};

#[derive(Debug, Clone)]
pub struct WsSettings {
    /// How often the server pings.
    pub ping_interval: Duration,
    /// A client silent for this long (no frame, no pong) is disconnected.
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

/// Upgrades the request and serves the connection of `user` in the background.
pub fn serve(
    req: &HttpRequest,
    body: actix_web::web::Payload,
    user: UserId,
    registry: Arc<ConnectionRegistry>,
    realtime: Arc<RealtimeService>,
    settings: WsSettings,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(req, body)?;
    let stream = stream.max_frame_size(settings.max_frame_bytes);
    actix_web::rt::spawn(async move {
        let (guard, queue) = match registry.register(&user) {
            Ok(registered) => registered,
            Err(refusal) => {
                let code = match refusal {
                    Refusal::ShuttingDown => CloseCode::Away,
                    Refusal::TooManyConnections { .. } => CloseCode::Policy,
                };
                let reason = CloseReason { code, description: Some(refusal.to_string()) };
                let _ = session.close(Some(reason)).await;
                return;
            }
        };
        run(session, stream, guard, queue, realtime, settings).await;
    });
    Ok(response)
}

async fn run(
    mut session: Session,
    mut stream: MessageStream,
    guard: ConnectionGuard,
    mut queue: crate::Receiver,
    realtime: Arc<RealtimeService>,
    settings: WsSettings,
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
            outbound = queue.recv() => match outbound {
                Some(Outbound { name, data }) => {
                    // A client that stops reading blocks this send for good; its queue then
                    // fills and the registry evicts it, which ends the wait.
                    tokio::select! {
                        sent = session.text(wire::native_frame(name, &data)) => {
                            if sent.is_err() { break None; }
                        }
                        () = guard.evicted() => break Some(too_slow()),
                    }
                }
                None if guard.was_evicted() => break Some(too_slow()),
                None => break Some(going_away()),
            },
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

/// A token bucket of client frames: `rate` per second, bursts of up to `rate`.
struct FrameBudget {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl FrameBudget {
    fn new(rate: u32) -> Self {
        let rate = if rate == 0 { f64::INFINITY } else { f64::from(rate) };
        Self { rate, tokens: rate, refilled: Instant::now() }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate.is_infinite() {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn too_slow() -> CloseReason {
    CloseReason { code: CloseCode::Policy, description: Some("too slow: events were not read in time".into()) }
}

fn going_away() -> CloseReason {
    CloseReason { code: CloseCode::Away, description: Some("server shutting down".into()) }
}

#[cfg(test)]
mod tests {
    use super::FrameBudget;
    use std::time::{Duration, Instant};

    #[test]
    fn a_burst_beyond_the_rate_is_refused_then_allowed_again() {
        let mut budget = FrameBudget::new(5);
        let start = Instant::now();
        assert!((0..5).all(|_| budget.take(start)));
        assert!(!budget.take(start));
        assert!(budget.take(start + Duration::from_millis(250)));
    }

    #[test]
    fn zero_means_no_limit() {
        let mut budget = FrameBudget::new(0);
        let now = Instant::now();
        assert!((0..10_000).all(|_| budget.take(now)));
    }
}
