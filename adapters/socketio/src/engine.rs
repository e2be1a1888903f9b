//! The Engine.IO sessions of this instance, whatever transport each is on at the moment.
//!
//! A session is one task ([`crate::session::run`]) that owns the protocol state. Transports
//! only move text: they push what the client sent into the session's `inbound` channel and
//! take what the session queued from its `outbox`. Long-polling GETs drain the outbox one
//! batch per request; a WebSocket, once upgraded, holds it for the rest of the session. Both
//! channels are bounded.
//!
//! A handshake opens a session before anyone is authenticated: [`crate::admission`] decides
//! whether it may (handshake rate and session caps per client address, a cap in all).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::HttpRequest;
use application::AccountService;
use chat_realtime::{Hub, QueueReceiver};
use tokio::sync::mpsc;

use crate::admission::{Address, HandshakeRate, Occupancy, Refusal, SessionLimits};
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
    /// How long a session may stay without joining the namespace: from its handshake, and
    /// again each time a joined socket leaves. Only a successful CONNECT stops it.
    pub connect_timeout: Duration,
    /// How long a WebSocket probe may take to complete the upgrade.
    pub upgrade_timeout: Duration,
    /// Engine.IO packets per second a client may send (averaged over a burst of as many),
    /// whatever the transport; 0: no limit. The same budget as `/ws` frames.
    pub max_packets_per_second: u32,
    /// Caps on open sessions and the handshake rate, per client address and in all.
    pub limits: SessionLimits,
}

impl EngineSettings {
    /// Socket.IO's own defaults for the connect (45 s) and upgrade (10 s) timeouts, and no
    /// session limits.
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
            limits: SessionLimits::default(),
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
    queue: QueueReceiver<String>,
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
    /// The client address the session counts against.
    address: Address,
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

/// The client address of a handshake, which its session counts against (`None`: unknown
/// peer). The caller's rule, the HTTP adapter's `client_ip` (the peer, or the entry a
/// trusted proxy wrote in `X-Forwarded-For`), so that every limit sees one client as one
/// address.
pub type ClientAddress = fn(&HttpRequest) -> Option<IpAddr>;

/// The session map, with the counts that cap it.
#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, Arc<SessionHandle>>,
    occupancy: Occupancy,
}

/// The Socket.IO endpoint's state, shared by every worker.
pub struct Engine {
    pub(crate) settings: EngineSettings,
    pub(crate) accounts: Arc<AccountService>,
    /// Registers each socket, follows its message stream, presence and client events.
    pub(crate) hub: Arc<Hub>,
    pub(crate) connect_gate: ConnectGate,
    client_address: ClientAddress,
    handshakes: HandshakeRate,
    sessions: Mutex<Sessions>,
}

impl Engine {
    pub fn new(
        settings: EngineSettings,
        accounts: Arc<AccountService>,
        hub: Arc<Hub>,
        connect_gate: ConnectGate,
        client_address: ClientAddress,
    ) -> Arc<Self> {
        Arc::new(Self {
            handshakes: HandshakeRate::new(settings.limits.handshakes_per_minute_per_address),
            settings,
            accounts,
            hub,
            connect_gate,
            client_address,
            sessions: Mutex::new(Sessions::default()),
        })
    }

    /// Open Engine.IO sessions, joined to the namespace or not.
    pub fn session_count(&self) -> usize {
        self.sessions().by_id.len()
    }

    /// The client address `req` counts against.
    pub(crate) fn client_address(&self, req: &HttpRequest) -> Address {
        (self.client_address)(req)
    }

    /// Starts a session for a handshake from `address` that carried `token` (header, cookie
    /// or query) and `since` (query), with the open packet already queued, and runs it on
    /// the current worker; unless the address used up its handshakes or a cap is reached.
    pub(crate) fn open_session(
        self: &Arc<Self>,
        address: Address,
        token: Option<String>,
        since: SinceArg,
        transport: Transport,
    ) -> Result<Arc<SessionHandle>, Refusal> {
        self.handshakes.check(address)?;
        // Counted from here; `remove` releases the place when the session ends.
        self.sessions().occupancy.admit(address, &self.settings.limits)?;
        let sid = random_id();
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let (outbox, outbox_rx) = chat_realtime::queue(self.settings.queue_capacity);
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
            address,
        });
        self.sessions().by_id.insert(sid.clone(), handle.clone());
        let handshake = crate::session::Handshake { token, since };
        actix_web::rt::spawn(crate::session::run(self.clone(), sid, handshake, inbound_rx, outbox));
        Ok(handle)
    }

    pub(crate) fn session(&self, sid: &str) -> Option<Arc<SessionHandle>> {
        self.sessions().by_id.get(sid).cloned()
    }

    /// Forgets an ended session, which frees its place under the caps.
    pub(crate) fn remove(&self, sid: &str) {
        let mut sessions = self.sessions();
        if let Some(handle) = sessions.by_id.remove(sid) {
            sessions.occupancy.release(handle.address);
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        // Every change is one map or count update that can't panic halfway: a poisoned lock
        // still guards consistent state.
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
        let (tx, rx) = chat_realtime::queue(16);
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
        let (tx, rx) = chat_realtime::queue::<String>(1);
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

    /// An engine over mocks that expect no call: the sessions of these tests never join
    /// the namespace, so they never reach the core.
    fn engine(limits: SessionLimits) -> Arc<Engine> {
        use application::ports::{
            MockClock, MockConversationRepository, MockGroupRepository, MockMessageRepository, MockNotifier,
            MockPasswordHasher, MockPresence, MockRevokedTokenRepository, MockTokenService,
            MockUserRepository,
        };
        let revocations = application::Revocations::new(Arc::new(MockRevokedTokenRepository::new()), None);
        let accounts = AccountService::new(
            Arc::new(MockUserRepository::new()),
            revocations,
            Arc::new(MockPasswordHasher::new()),
            Arc::new(MockTokenService::new()),
            Arc::new(MockClock::new()),
        );
        let realtime = application::RealtimeService::new(
            Arc::new(MockPresence::new()),
            Arc::new(MockNotifier::new()),
            Arc::new(MockConversationRepository::new()),
        );
        let groups = Arc::new(MockGroupRepository::new());
        let delivery = chat_realtime::Delivery::new(
            chat_realtime::ConnectionRegistry::new(8, 0),
            chat_realtime::GroupMembers::new(groups.clone()),
        );
        let hub = Hub::new(delivery, Arc::new(realtime), Arc::new(MockMessageRepository::new()), groups);
        let settings = EngineSettings {
            limits,
            ..EngineSettings::new(Duration::from_secs(25), Duration::from_secs(20), 1024, 16, 0)
        };
        Engine::new(settings, Arc::new(accounts), hub, Box::new(|_| Ok(())), |_| None)
    }

    fn open(engine: &Arc<Engine>, address: [u8; 4]) -> Result<Arc<SessionHandle>, Refusal> {
        engine.open_session(Some(IpAddr::from(address)), None, None, Transport::Polling)
    }

    /// The client closes the session; returns once it has ended (its last packet read).
    async fn close(handle: &SessionHandle) {
        handle.inbound.send(Inbound::Packet(packet::CLOSE.to_owned())).await.unwrap();
        let mut outbox = handle.outbox.lock().await;
        while outbox.next().await.is_some_and(|p| p != packet::CLOSE) {}
    }

    #[tokio::test]
    async fn handshakes_past_an_address_cap_are_refused_until_one_of_its_sessions_ends() {
        let limits = SessionLimits { max_sessions_per_address: 2, ..SessionLimits::default() };
        let engine = engine(limits);
        tokio::task::LocalSet::new()
            .run_until(async {
                let first = open(&engine, [10, 0, 0, 1]).unwrap();
                open(&engine, [10, 0, 0, 1]).unwrap();
                assert_eq!(open(&engine, [10, 0, 0, 1]).err(), Some(Refusal::AddressFull));
                assert!(open(&engine, [10, 0, 0, 2]).is_ok(), "other addresses still get in");
                assert_eq!(engine.session_count(), 3, "a refused handshake leaves no session");

                close(&first).await;
                assert_eq!(engine.session_count(), 2);
                assert!(open(&engine, [10, 0, 0, 1]).is_ok(), "the ended session freed its place");
            })
            .await;
    }

    #[tokio::test]
    async fn handshakes_past_the_instance_cap_are_refused() {
        let limits =
            SessionLimits { max_sessions: 2, max_sessions_per_address: 2, ..SessionLimits::default() };
        let engine = engine(limits);
        tokio::task::LocalSet::new()
            .run_until(async {
                open(&engine, [10, 0, 0, 1]).unwrap();
                open(&engine, [10, 0, 0, 2]).unwrap();
                assert_eq!(open(&engine, [10, 0, 0, 3]).err(), Some(Refusal::ServerFull));
            })
            .await;
    }

    #[tokio::test]
    async fn handshakes_past_an_address_rate_are_refused_before_any_session_is_made() {
        let limits = SessionLimits { handshakes_per_minute_per_address: 2, ..SessionLimits::default() };
        let engine = engine(limits);
        tokio::task::LocalSet::new()
            .run_until(async {
                close(&open(&engine, [10, 0, 0, 1]).unwrap()).await;
                close(&open(&engine, [10, 0, 0, 1]).unwrap()).await;
                // Both sessions ended: only the rate stands in the way.
                assert!(matches!(open(&engine, [10, 0, 0, 1]), Err(Refusal::HandshakeRate { .. })));
                assert_eq!(engine.session_count(), 0);
                assert!(open(&engine, [10, 0, 0, 2]).is_ok());
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_never_joins_is_closed_at_its_deadline_whatever_it_sends() {
        let engine = engine(SessionLimits::default());
        let timeout = engine.settings.connect_timeout;
        tokio::task::LocalSet::new()
            .run_until(async {
                let handle = open(&engine, [10, 0, 0, 1]).unwrap();
                let started = tokio::time::Instant::now();
                // DISCONNECT, pongs and noops, every 10 s: a live client that never connects.
                let mut packets = ["41", "3", "6"].into_iter().cycle();
                while handle.inbound.send(Inbound::Packet(packets.next().unwrap().to_owned())).await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(10) / 3).await;
                    if engine.session_count() == 0 {
                        break;
                    }
                    assert!(started.elapsed() <= timeout, "still open after {:?}", started.elapsed());
                }
                assert_eq!(engine.session_count(), 0);
                assert!(started.elapsed() >= timeout, "closed after {:?}", started.elapsed());
            })
            .await;
    }
}
