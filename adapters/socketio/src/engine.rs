//! The Engine.IO sessions of this instance, whatever transport each is on at the moment.
//!
//! A session is one task ([`crate::session::run`]) that owns the protocol state. Transports
//! only move text: they push what the client sent into the session's `inbound` channel and
//! take what the session queued from its `outbox`. Long-polling GETs drain the outbox one
//! batch per request; a WebSocket, once upgraded, holds it for the rest of the session. Both
//! channels are bounded.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use application::{AccountService, MessagingService, RealtimeService};
use tokio::sync::mpsc;
use ws_notifier::ConnectionRegistry;

use crate::packet::{self, SinceArg, SEPARATOR};

/// Packets a transport may hand a session before it waits for the session to catch up.
const INBOUND_CAPACITY: usize = 32;

#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How often the server pings (`pingInterval`).
    pub ping_interval: Duration,
    /// How long the server waits for the pong (`pingTimeout`).
    pub ping_timeout: Duration,
    /// Largest polling body or WebSocket message a client may send (`maxPayload`), and the
    /// size a polling response is filled up to.
    pub max_payload: usize,
    /// Packets that may wait for one client before it counts as stalled and is closed.
    pub queue_capacity: usize,
    /// How long a session may stay without joining the namespace.
    pub connect_timeout: Duration,
    /// How long a WebSocket probe may take to complete the upgrade.
    pub upgrade_timeout: Duration,
    /// Engine.IO packets per second a client may send (averaged over a burst of as many),
    /// whatever the transport; 0: no limit. The same budget as `/ws` frames.
    pub max_packets_per_second: u32,
}

impl EngineSettings {
    /// Socket.IO's own defaults for the connect (45 s) and upgrade (10 s) timeouts.
    pub fn new(
        ping_interval: Duration,
        ping_timeout: Duration,
        max_payload: usize,
        queue_capacity: usize,
        max_packets_per_second: u32,
    ) -> Self {
        Self {
            ping_interval,
            ping_timeout,
            max_payload: max_payload.max(1024),
            queue_capacity: queue_capacity.max(8),
            connect_timeout: Duration::from_secs(45),
            upgrade_timeout: Duration::from_secs(10),
            max_packets_per_second,
        }
    }
}

/// What a transport hands a session.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// One Engine.IO packet as text.
    Packet(String),
    /// A WebSocket probe succeeded: release the pending poll so the client can upgrade.
    Probe,
    /// The transport failed or closed; the session ends.
    Closed(&'static str),
}

/// The packets queued for the client, with the one a full polling response left over.
pub(crate) struct Outbox {
    queue: mpsc::Receiver<String>,
    held: Option<String>,
}

impl Outbox {
    /// The next packet; `None` once the session has ended and everything was taken.
    pub(crate) async fn next(&mut self) -> Option<String> {
        match self.held.take() {
            Some(packet) => Some(packet),
            None => self.queue.recv().await,
        }
    }

    /// One long-polling response: waits for a packet, then adds those already queued while
    /// the body stays within `max_bytes`.
    pub(crate) async fn next_batch(&mut self, max_bytes: usize) -> Option<String> {
        let mut batch = self.next().await?;
        while let Ok(packet) = self.queue.try_recv() {
            if batch.len() + 1 + packet.len() > max_bytes {
                self.held = Some(packet);
                break;
            }
            batch.push(SEPARATOR);
            batch.push_str(&packet);
        }
        Some(batch)
    }
}

/// How transports reach a running session.
pub(crate) struct SessionHandle {
    pub(crate) inbound: mpsc::Sender<Inbound>,
    pub(crate) outbox: tokio::sync::Mutex<Outbox>,
    /// A WebSocket is probing; a second one is refused.
    pub(crate) upgrading: AtomicBool,
    /// The WebSocket carries the session; polling requests are refused.
    pub(crate) upgraded: AtomicBool,
}

/// Which transport a session starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Polling,
    WebSocket,
}

/// Decides whether a user may connect a socket now (the per-user connect rate, shared with
/// the other socket endpoint); `Err` carries the refusal the client is told.
pub type ConnectGate = Box<dyn Fn(&domain::UserId) -> Result<(), String> + Send + Sync>;

/// The Socket.IO endpoint's state, shared by every worker.
pub struct Engine {
    pub(crate) settings: EngineSettings,
    pub(crate) accounts: Arc<AccountService>,
    pub(crate) realtime: Arc<RealtimeService>,
    /// Reads each socket's message stream: the replay after `since`, and gaps.
    pub(crate) messaging: Arc<MessagingService>,
    pub(crate) registry: Arc<ConnectionRegistry>,
    pub(crate) connect_gate: ConnectGate,
    sessions: Mutex<HashMap<String, Arc<SessionHandle>>>,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        accounts: Arc<AccountService>,
        realtime: Arc<RealtimeService>,
        messaging: Arc<MessagingService>,
        registry: Arc<ConnectionRegistry>,
        connect_gate: ConnectGate,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            accounts,
            realtime,
            messaging,
            registry,
            connect_gate,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Open Engine.IO sessions, joined to the namespace or not.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Starts a session whose handshake carried `token` (header, cookie or query) and
    /// `since` (query), with the open packet already queued, and runs it on the current
    /// worker.
    pub(crate) fn open_session(
        self: &Arc<Self>,
        token: Option<String>,
        since: SinceArg,
        transport: Transport,
    ) -> Arc<SessionHandle> {
        let sid = random_id();
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let (outbox, outbox_rx) = mpsc::channel(self.settings.queue_capacity);
        let upgrades: &[&str] = match transport {
            Transport::Polling => &["websocket"],
            Transport::WebSocket => &[],
        };
        let open = packet::open(
            &sid,
            upgrades,
            self.settings.ping_interval.as_millis(),
            self.settings.ping_timeout.as_millis(),
            self.settings.max_payload,
        );
        // The channel is new and empty: the first packet always fits.
        let _ = outbox.try_send(open);
        let handle = Arc::new(SessionHandle {
            inbound,
            outbox: tokio::sync::Mutex::new(Outbox { queue: outbox_rx, held: None }),
            upgrading: AtomicBool::new(false),
            upgraded: AtomicBool::new(transport == Transport::WebSocket),
        });
        self.sessions().insert(sid.clone(), handle.clone());
        let handshake = crate::session::Handshake { token, since };
        actix_web::rt::spawn(crate::session::run(self.clone(), sid, handshake, inbound_rx, outbox));
        handle
    }

    pub(crate) fn session(&self, sid: &str) -> Option<Arc<SessionHandle>> {
        self.sessions().get(sid).cloned()
    }

    pub(crate) fn remove(&self, sid: &str) {
        self.sessions().remove(sid);
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SessionHandle>>> {
        // Every mutation is a single map call: a poisoned map is still consistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// 128 random bits from a CSPRNG, in hex: session ids must not be guessable, since knowing
/// one is enough to read that session's events over polling.
pub(crate) fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(packets: &[&str]) -> Outbox {
        let (tx, rx) = mpsc::channel(16);
        for p in packets {
            tx.try_send((*p).to_owned()).unwrap();
        }
        Outbox { queue: rx, held: None }
    }

    #[tokio::test]
    async fn a_poll_joins_queued_packets_with_the_record_separator() {
        let mut outbox = outbox(&["2", "42[\"a\",1]"]);
        assert_eq!(outbox.next_batch(1000).await.unwrap(), "2\u{1e}42[\"a\",1]");
    }

    #[tokio::test]
    async fn a_poll_stops_at_the_size_limit_and_keeps_the_rest_in_order() {
        let mut outbox = outbox(&["aaaa", "bbbb", "cccc"]);
        assert_eq!(outbox.next_batch(9).await.unwrap(), "aaaa\u{1e}bbbb");
        assert_eq!(outbox.next_batch(9).await.unwrap(), "cccc");
    }

    #[tokio::test]
    async fn a_closed_outbox_ends_polling() {
        let (tx, rx) = mpsc::channel::<String>(1);
        drop(tx);
        let mut outbox = Outbox { queue: rx, held: None };
        assert_eq!(outbox.next_batch(10).await, None);
    }

    #[test]
    fn session_ids_are_long_and_distinct() {
        let (a, b) = (random_id(), random_id());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
