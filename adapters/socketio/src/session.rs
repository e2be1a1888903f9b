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
use std::future::Future;
use std::sync::Arc;

use application::{AccountError, FollowError};
use chat_realtime::{
    log_stop, starts_over, stop_reason, Ended, FrameBudget, Handshake as Joining, Live, Outbound,
    QueueSender, Queued, Refusal, Refused, TrySendError,
};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

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

/// What the Engine.IO handshake carried, for the CONNECT packets that don't say.
pub(crate) struct Handshake {
    pub(crate) token: Option<String>,
    pub(crate) since: SinceArg,
}

/// The socket joined to the main namespace: registered for delivery.
struct Socket {
    live: Live,
    sid: String,
    /// Frames due to the client, in order, waiting for room in the outbox: replay pages and
    /// what `Follow::admit` made of queued events. Once the replay is over, the queue is
    /// read only when this is empty, so a client that falls behind fills its registry queue
    /// and is evicted, as on `/ws`.
    pending: VecDeque<Outbound>,
}

struct Session {
    engine: Arc<Engine>,
    handshake: Handshake,
    outbox: QueueSender<String>,
    socket: Option<Socket>,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    connect_deadline: Instant,
    budget: FrameBudget,
}

/// What a session's deadline is for.
#[derive(Clone, Copy)]
enum Due {
    Expiry,
    Join,
    Pong,
    Ping,
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
    Event(Option<Queued>),
    /// The registry dropped the socket: it fell too far behind, or its token was revoked.
    Ended(Ended),
}

/// The session's task. A plain function returning the loop, so the task holds the session
/// once (an `async fn` would also keep the arguments it was built from).
pub(crate) fn run(
    engine: Arc<Engine>,
    sid: String,
    handshake: Handshake,
    inbound: mpsc::Receiver<Inbound>,
    outbox: QueueSender<String>,
) -> impl Future<Output = ()> {
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
    // Every await below that is not waiting on the client or the queue is boxed: an idle
    // session's task then holds only the loop's own state, not the largest of those futures.
    async move {
        let mut inbound = inbound;
        let reason = session.serve(&mut inbound).await;
        tracing::debug!(reason, "socket.io session ended");
        session.engine.remove(&sid);
        // Tells a pending poll, or the WebSocket, that the session is over.
        let _ = session.outbox.try_send(packet::CLOSE.to_owned());
        Box::pin(session.leave()).await;
    }
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
            let timer = self.next_deadline();
            tokio::select! {
                message = inbound.recv() => match message {
                    Some(Inbound::Packet(text)) => {
                        if !self.budget.take(std::time::Instant::now()) {
                            return Err("too many packets per second");
                        }
                        Box::pin(self.on_packet(&text)).await?
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
                        let frames = Box::pin(socket.live.follow.replay()).await.map_err(stopped)?;
                        socket.pending.extend(frames);
                    }
                    Step::Event(Some(queued)) => {
                        let socket = self.socket.as_mut().expect("a step of a joined socket");
                        let frames = Box::pin(socket.live.follow.admit(queued)).await.map_err(stopped)?;
                        socket.pending.extend(frames);
                    }
                    Step::Event(None) => {
                        let why = self.socket.as_ref().map_or(Ended::ShuttingDown, |s| s.live.guard.end());
                        return Err(self.ended(why));
                    }
                    Step::Ended(why) => return Err(self.ended(why)),
                },
                // One timer for the session's next deadline (each timer is a few hundred bytes
                // held for the socket's life).
                _ = sleep_until(timer.0) => match timer.1 {
                    Due::Expiry => return Err(self.ended(Ended::Expired)),
                    Due::Join => return Err("no namespace joined in time"),
                    Due::Pong => return Err("heartbeat timeout"),
                    Due::Ping => {
                        self.push(packet::PING.to_owned())?;
                        self.pong_deadline = Some(Instant::now() + self.engine.settings.ping_timeout);
                    }
                },
            }
        }
    }

    /// When the session must act next, and what is due then: the token's expiry, joining the
    /// namespace, the client's pong, or the next ping.
    fn next_deadline(&self) -> (Instant, Due) {
        let heartbeat = match self.pong_deadline {
            Some(at) => (at, Due::Pong),
            None => (self.next_ping, Due::Ping),
        };
        let join = self.socket.is_none().then_some((self.connect_deadline, Due::Join));
        let expiry = self.socket.as_ref().map(|socket| (socket.live.expiry, Due::Expiry));
        [join, expiry]
            .into_iter()
            .flatten()
            .fold(heartbeat, |next, other| if other.0 < next.0 { other } else { next })
    }

    /// The server ends the socket: a revoked or expired token is told why and disconnected
    /// for good; a client too slow to read gets nothing more (it reconnects, and resumes its
    /// stream), nor does one of a server shutting down.
    fn ended(&self, why: Ended) -> Reason {
        match why {
            Ended::Revoked | Ended::Expired => self.disconnect(why.reason()),
            Ended::TooSlow | Ended::ShuttingDown => why.reason(),
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
            TrySendError::Full => "too slow: packets were not read in time",
            TrySendError::Closed => "transport gone",
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
                    let user = socket.live.guard.user();
                    let data = data.unwrap_or(serde_json::Value::Null);
                    if let Err(invalid) = self.engine.hub.client_event(user, &name, data).await {
                        tracing::debug!(%invalid, "socket.io event not understood");
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
        let session = match self.engine.accounts.authenticate_connection(&token).await {
            Ok(session) => session,
            Err(AccountError::Unauthenticated) => return self.push(refuse("Invalid or expired token")),
            Err(error) => {
                tracing::warn!(error = %error, "socket.io authentication failed");
                return self.push(refuse("Service unavailable, retry later"));
            }
        };
        let user = session.user_id().clone();
        if let Err(refusal) = (self.engine.connect_gate)(&user) {
            return self.push(refuse(&refusal));
        }
        let since = match since.or_else(|| self.handshake.since.clone()) {
            None => None,
            Some(Ok(since)) => Some(since),
            Some(Err(_)) => return self.push(refuse("since is not a valid cursor")),
        };
        let mut live = match self.engine.hub.connect(Joining::new(&session, since)).await {
            Ok(live) => live,
            Err(Refused::Stream(stop)) => {
                log_stop(&stop);
                return match stop {
                    _ if starts_over(&stop) => self.push(refuse(stop_reason(&stop))),
                    _ => self.push(refuse("Service unavailable, retry later")),
                };
            }
            Err(Refused::Registry(Refusal::ShuttingDown)) => {
                let _ = self.push(refuse("Server shutting down"));
                return Err(Ended::ShuttingDown.reason());
            }
            Err(Refused::Registry(refusal @ Refusal::TooManyConnections { .. })) => {
                return self.push(refuse(&refusal.to_string()));
            }
            Err(Refused::Registry(Refusal::Revoked)) => return self.push(refuse("Invalid or expired token")),
        };
        let sid = random_id();
        // The reply goes out before anything the registry delivers to the new socket.
        self.push(packet::connect_ok(&sid))?;
        live.follow.track(live.guard.position());
        self.socket = Some(Socket { live, sid, pending: VecDeque::new() });
        // Presence, as on `/ws`: a first connection is announced to everyone (this one
        // included, through the registry); another one gets the list for itself.
        for Outbound { name, data, .. } in self.engine.hub.opened(&user).await {
            self.push(packet::event(name, &data))?;
        }
        Ok(())
    }

    /// Leaves the namespace, if joined: unregisters and updates presence.
    async fn leave(&mut self) {
        let Some(socket) = self.socket.take() else { return };
        self.engine.hub.closed(socket.live.guard).await;
    }
}

/// The socket's next step; never completes without a joined socket.
///
/// Cancel safe, as a `select!` branch must be: reading the queue and reserving room either
/// complete or leave nothing behind (a frame is taken from `pending` only once its place is
/// reserved). The steps that read the store (a replay page, an admission that fills a gap)
/// are only announced here and run by the caller to the end.
async fn next_step(socket: &mut Option<Socket>, outbox: &QueueSender<String>) -> Step {
    let Some(Socket { live, pending, .. }) = socket else { return std::future::pending().await };
    let replaying = live.follow.replaying();
    if replaying && pending.is_empty() {
        return Step::Replay;
    }
    // During the replay the queue is read on (see `Follow`), so it does not fill meanwhile.
    let read_queue = replaying || pending.is_empty();
    let send = !pending.is_empty();
    tokio::select! {
        // Only this session sends into the outbox: the room it waited for is still there.
        room = outbox.room(OUTBOX_HEADROOM + 1), if send => match room {
            Ok(()) => match pending.pop_front() {
                Some(Outbound { name, data, .. }) if outbox.try_send(packet::event(name, &data)).is_err() => {
                    Step::OutboxClosed
                }
                _ => Step::Sent,
            },
            Err(_) => Step::OutboxClosed,
        },
        event = live.queue.recv(), if read_queue => Step::Event(event),
        why = live.guard.ended() => Step::Ended(why),
    }
}

/// The socket can't follow its stream without a gap: the session ends, the client
/// reconnects (with `auth.since` set to the last cursor it processed, if it keeps one).
fn stopped(stop: FollowError) -> Reason {
    log_stop(&stop);
    stop_reason(&stop)
}
