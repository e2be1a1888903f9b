//! One Engine.IO session and the Socket.IO socket it carries: a single task with one
//! `select!` over the client's packets, the socket's next step (room in the outbox for a
//! frame due, a replay page to read, an event from the registry queue), the heartbeat and
//! the connect deadline, the expiry of the socket's token. It never waits to queue a packet
//! for the client: frames of the
//! socket's message stream wait for room in the bounded outbox (keeping a little of it free
//! for the heartbeat), everything else is `try_send`, and a client that doesn't take its
//! packets is closed rather than buffered for.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use application::ports::Event;
use application::AccountError;
use domain::UserId;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use chat_websocket::wire::{self, names, TypingIn};
use chat_websocket::{ConnectionGuard, Ended, Follow, FrameBudget, Outbound, Receiver, SessionToken, Stop};

use crate::engine::{random_id, Engine, Inbound};
use crate::packet::{self, EnginePacket, SinceArg, SocketPacket, MAIN_NAMESPACE};

/// Why a session ended, for the log.
type Reason = &'static str;

/// Outbox places frames of the stream leave free: for a ping, and replies to the client.
const OUTBOX_HEADROOM: usize = 4;

/// The Socket.IO DISCONNECT packet of the main namespace, in an Engine.IO message: the
/// server ended the socket, and the client does not reconnect by itself.
const DISCONNECT: &str = "41";
/// The event that tells a client why the server ended its socket, before [`DISCONNECT`]
/// (which carries no reason): `{"reason": text}`.
const SESSION_ENDED: &str = "sessionEnded";
const EXPIRED: Reason = "session ended: the token expired";

/// What the Engine.IO handshake carried, for the CONNECT packets that don't say.
pub(crate) struct Handshake {
    pub(crate) token: Option<String>,
    pub(crate) since: SinceArg,
}

/// The socket joined to the main namespace: registered for delivery.
struct Socket {
    guard: ConnectionGuard,
    queue: Receiver,
    sid: String,
    follow: Follow,
    /// Frames due to the client, in order, waiting for room in the outbox: replay pages and
    /// what [`Follow::admit`] made of queued events. Once the replay is over, the queue is
    /// read only when this is empty, so a client that falls behind fills its registry queue
    /// and is evicted, as on `/ws`.
    pending: VecDeque<Outbound>,
    /// When the token the socket joined with expires: the socket ends then.
    expiry: Instant,
}

struct Session {
    engine: Arc<Engine>,
    handshake: Handshake,
    outbox: mpsc::Sender<String>,
    socket: Option<Socket>,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    connect_deadline: Instant,
    budget: FrameBudget,
}

/// What the socket did or is ready for next.
enum Step {
    /// The first pending frame went to the outbox.
    Sent,
    /// The outbox is gone with the transport.
    OutboxClosed,
    /// Time to read the next page of the replay.
    Replay,
    /// An event from the registry queue; `None` once the queue is closed.
    Event(Option<Outbound>),
    /// The registry dropped the socket: it fell too far behind, or its token was revoked.
    Ended(Ended),
}

pub(crate) async fn run(
    engine: Arc<Engine>,
    sid: String,
    handshake: Handshake,
    mut inbound: mpsc::Receiver<Inbound>,
    outbox: mpsc::Sender<String>,
) {
    let now = Instant::now();
    let mut session = Session {
        next_ping: now + engine.settings.ping_interval,
        connect_deadline: now + engine.settings.connect_timeout,
        pong_deadline: None,
        socket: None,
        budget: FrameBudget::new(engine.settings.max_packets_per_second),
        engine,
        handshake,
        outbox,
    };
    let reason = session.serve(&mut inbound).await;
    tracing::debug!(reason, "socket.io session ended");
    session.engine.remove(&sid);
    // Tells a pending poll, or the WebSocket, that the session is over.
    let _ = session.outbox.try_send(packet::CLOSE.to_owned());
    session.leave().await;
}

impl Session {
    /// Runs until the session ends, and says why.
    async fn serve(&mut self, inbound: &mut mpsc::Receiver<Inbound>) -> Reason {
        match self.serve_packets(inbound).await {
            Err(reason) => reason,
        }
    }

    async fn serve_packets(&mut self, inbound: &mut mpsc::Receiver<Inbound>) -> Result<Infallible, Reason> {
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let expiry = self.socket.as_ref().map(|s| s.expiry);
            tokio::select! {
                message = inbound.recv() => match message {
                    Some(Inbound::Packet(text)) => {
                        if !self.budget.take(std::time::Instant::now()) {
                            return Err("too many packets per second");
                        }
                        self.on_packet(&text).await?
                    }
                    Some(Inbound::Probe) => self.push(packet::NOOP.to_owned())?,
                    Some(Inbound::Closed(reason)) => return Err(reason),
                    None => return Err("transport gone"),
                },
                step = next_step(&mut self.socket, &self.outbox) => match step {
                    Step::Sent => {}
                    Step::OutboxClosed => return Err("transport gone"),
                    Step::Replay => {
                        let socket = self.socket.as_mut().expect("a step of a joined socket");
                        let frames = socket.follow.replay().await.map_err(stopped)?;
                        socket.pending.extend(frames);
                    }
                    Step::Event(Some(outbound)) => {
                        let socket = self.socket.as_mut().expect("a step of a joined socket");
                        let frames = socket.follow.admit(outbound).await.map_err(stopped)?;
                        socket.pending.extend(frames);
                    }
                    Step::Event(None) => {
                        return Err(match self.socket.as_ref().and_then(|s| s.guard.end()) {
                            Some(why) => self.ended(why),
                            None => "server shutting down",
                        });
                    }
                    Step::Ended(why) => return Err(self.ended(why)),
                },
                _ = sleep_until(expiry.unwrap_or(far)), if expiry.is_some() => {
                    return Err(self.disconnect(EXPIRED));
                }
                _ = sleep_until(self.next_ping), if self.pong_deadline.is_none() => {
                    self.push(packet::PING.to_owned())?;
                    self.pong_deadline = Some(Instant::now() + self.engine.settings.ping_timeout);
                }
                _ = sleep_until(self.pong_deadline.unwrap_or(far)), if self.pong_deadline.is_some() => {
                    return Err("heartbeat timeout");
                }
                _ = sleep_until(self.connect_deadline), if self.socket.is_none() => {
                    return Err("no namespace joined in time");
                }
            }
        }
    }

    /// The registry ended the socket: a revoked token is told why and disconnected for good;
    /// a client too slow to read gets nothing more (it reconnects, and resumes its stream).
    fn ended(&self, why: Ended) -> Reason {
        match why {
            Ended::Revoked => self.disconnect(why.reason()),
            Ended::TooSlow => why.reason(),
        }
    }

    /// Tells the client why its socket ends, then disconnects it (best effort: a client that
    /// stopped reading may not get either).
    fn disconnect(&self, reason: Reason) -> Reason {
        let data = serde_json::json!({ "reason": reason }).to_string();
        let _ = self.push(packet::event(SESSION_ENDED, &data));
        let _ = self.push(DISCONNECT.to_owned());
        reason
    }

    /// Queues a packet for the client; a full queue means the client stopped reading.
    fn push(&self, packet: String) -> Result<(), Reason> {
        self.outbox.try_send(packet).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => "too slow: packets were not read in time",
            mpsc::error::TrySendError::Closed(_) => "transport gone",
        })
    }

    async fn on_packet(&mut self, text: &str) -> Result<(), Reason> {
        match packet::decode_engine(text) {
            Ok(EnginePacket::Message(data)) => self.on_socket_packet(data).await,
            Ok(EnginePacket::Pong(_)) => {
                self.pong_deadline = None;
                self.next_ping = Instant::now() + self.engine.settings.ping_interval;
                Ok(())
            }
            Ok(EnginePacket::Ping(data)) => self.push(packet::pong(data)),
            Ok(EnginePacket::Noop) => Ok(()),
            Ok(EnginePacket::Close) => Err("closed by the client"),
            Ok(EnginePacket::Open | EnginePacket::Upgrade) => Err("unexpected engine.io packet"),
            Err(error) => {
                tracing::debug!(%error, "malformed engine.io packet");
                Err("malformed engine.io packet")
            }
        }
    }

    async fn on_socket_packet(&mut self, data: &str) -> Result<(), Reason> {
        let packet = match packet::decode_socket(data) {
            Ok(packet) => packet,
            Err(error) => {
                tracing::debug!(%error, "malformed socket.io packet");
                return Err("malformed socket.io packet");
            }
        };
        if packet.namespace() != MAIN_NAMESPACE {
            return match packet {
                SocketPacket::Connect { namespace, .. } => {
                    self.push(packet::connect_error(namespace, "Invalid namespace"))
                }
                // Nothing else can address a namespace that was never joined.
                _ => Ok(()),
            };
        }
        match packet {
            SocketPacket::Connect { token, since, .. } => self.connect(token, since).await,
            SocketPacket::Disconnect { .. } => {
                // Only a socket that joined earns a new deadline: a session that never
                // completed a CONNECT keeps its first one, whatever it sends.
                if self.socket.is_some() {
                    self.leave().await;
                    self.connect_deadline = Instant::now() + self.engine.settings.connect_timeout;
                }
                Ok(())
            }
            SocketPacket::Event { name, data, .. } => {
                // Acks are not requested of the server by this API's events: an ack id is
                // accepted and left unanswered, as the original server does.
                if let Some(socket) = &self.socket {
                    if name == names::TYPING {
                        let user = socket.guard.user().clone();
                        match data.map(serde_json::from_value::<TypingIn>) {
                            Some(Ok(typing)) => {
                                self.engine.realtime.typing(&user, &typing.to, typing.is_typing).await
                            }
                            _ => tracing::debug!("typing event without {{to, isTyping}}"),
                        }
                    }
                }
                Ok(())
            }
            SocketPacket::Ack { .. } => Ok(()),
        }
    }

    /// Joins the main namespace: the CONNECT packet's token and `since` first, then the
    /// handshake's. The stream is started before the registration, and replayed after it.
    async fn connect(&mut self, token: Option<String>, since: SinceArg) -> Result<(), Reason> {
        if let Some(socket) = &self.socket {
            return self.push(packet::connect_ok(&socket.sid));
        }
        let refuse = |message| packet::connect_error(MAIN_NAMESPACE, message);
        let Some(token) = token.or_else(|| self.handshake.token.clone()) else {
            return self
                .push(refuse("Authentication required: pass auth.token, a token cookie or a Bearer header"));
        };
        let (user, token) = match self.engine.accounts.authenticate(&token).await {
            Ok(session) => (
                session.user_id().clone(),
                SessionToken { id: session.claims.token_id, expires_at: session.claims.expires_at },
            ),
            Err(AccountError::Unauthenticated) => return self.push(refuse("Invalid or expired token")),
            Err(error) => {
                tracing::warn!(error = %error, "socket.io authentication failed");
                return self.push(refuse("Service unavailable, retry later"));
            }
        };
        if let Err(refusal) = (self.engine.connect_gate)(&user) {
            return self.push(refuse(&refusal));
        }
        let since = match since.or_else(|| self.handshake.since.clone()) {
            None => None,
            Some(Ok(since)) => Some(since),
            Some(Err(_)) => return self.push(refuse("since is not a valid cursor")),
        };
        let follow = match Follow::start(self.engine.messaging.clone(), user.clone(), since).await {
            Ok(follow) => follow,
            Err(stop @ Stop::Ahead { .. }) => return self.push(refuse(stop.reason())),
            Err(stop) => {
                tracing::warn!(error = %stop, "a socket's stream could not be started");
                return self.push(refuse("Service unavailable, retry later"));
            }
        };
        let (guard, queue) = match self.engine.registry.register(&user, &token) {
            Ok(registered) => registered,
            Err(chat_websocket::Refusal::ShuttingDown) => {
                let _ = self.push(refuse("Server shutting down"));
                return Err("server shutting down");
            }
            Err(refusal @ chat_websocket::Refusal::TooManyConnections { .. }) => {
                return self.push(refuse(&refusal.to_string()));
            }
            Err(chat_websocket::Refusal::Revoked) => return self.push(refuse("Invalid or expired token")),
        };
        let sid = random_id();
        // The reply goes out before anything the registry delivers to the new socket.
        self.push(packet::connect_ok(&sid))?;
        let expiry = token.deadline();
        self.socket = Some(Socket { guard, queue, sid, follow, pending: VecDeque::new(), expiry });
        self.opened(&user).await
    }

    /// Presence, as the native session does: a first connection is announced to everyone
    /// (this one included, through the registry); another one gets the list for itself.
    async fn opened(&mut self, user: &UserId) -> Result<(), Reason> {
        match self.engine.realtime.connection_opened(user).await {
            Ok(Some(online)) => {
                for (name, data) in wire::encode_event(&Event::OnlineUsers(online)) {
                    self.push(packet::event(name, &data))?;
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %error, "presence unavailable for a new connection"),
        }
        Ok(())
    }

    /// Leaves the namespace, if joined: unregisters and updates presence.
    async fn leave(&mut self) {
        let Some(socket) = self.socket.take() else { return };
        let user = socket.guard.user().clone();
        drop(socket);
        if let Err(error) = self.engine.realtime.connection_closed(&user).await {
            tracing::warn!(error = %error, "presence not updated for a closed connection");
        }
    }
}

/// The socket's next step; never completes without a joined socket.
///
/// Cancel safe, as a `select!` branch must be: reading the queue and reserving room either
/// complete or leave nothing behind (a frame is taken from `pending` only once its place is
/// reserved). The steps that read the store (a replay page, an admission that fills a gap)
/// are only announced here and run by the caller to the end.
async fn next_step(socket: &mut Option<Socket>, outbox: &mpsc::Sender<String>) -> Step {
    let Some(socket) = socket else { return std::future::pending().await };
    let replaying = socket.follow.replaying();
    if replaying && socket.pending.is_empty() {
        return Step::Replay;
    }
    // During the replay the queue is read on (see `Follow`), so it does not fill meanwhile.
    let read_queue = replaying || socket.pending.is_empty();
    let send = !socket.pending.is_empty();
    tokio::select! {
        room = outbox.reserve_many(OUTBOX_HEADROOM + 1), if send => match room {
            Ok(mut room) => {
                if let (Some(place), Some(Outbound { name, data, .. })) = (room.next(), socket.pending.pop_front()) {
                    place.send(packet::event(name, &data));
                }
                Step::Sent
            }
            Err(_) => Step::OutboxClosed,
        },
        event = socket.queue.recv(), if read_queue => Step::Event(event),
        why = socket.guard.ended() => Step::Ended(why),
    }
}

/// The socket can't follow its stream without a gap: the session ends, the client
/// reconnects (with `auth.since` set to the last cursor it processed, if it keeps one).
fn stopped(stop: Stop) -> Reason {
    match &stop {
        Stop::Storage(error) => tracing::warn!(error = %error, "a socket's stream could not be read"),
        Stop::Resync { announced } => {
            tracing::info!(%announced, "closing a socket that cannot follow its stream")
        }
        Stop::Ahead { .. } => {}
    }
    stop.reason()
}
