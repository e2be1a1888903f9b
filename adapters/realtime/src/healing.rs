//! Healing live delivery: bringing every connection of this instance up to date from the
//! store when live events may have been lost on their way (the fan-out bus was cut, or
//! resubscribed), with the number of connections reading the store at once bounded.
//!
//! [`ConnectionRegistry::heal`](crate::ConnectionRegistry::heal) queues a
//! [`Queued::CatchUp`](crate::Queued::CatchUp) behind whatever each connection has queued;
//! its [`Follow`](crate::Follow) then reads the store after its cursor (as its replay
//! does), under one of the instance's permits, and sends what it had not had, in order. What
//! it already had is not read again; the live events queued behind it are repeats then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use application::ports::MessageRepository;
use domain::{Cursor, UserId};

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::ConnectionRegistry;

/// How many connections of one instance read the store to heal at the same time, by
/// default: after an outage, 10,000 connections queue for these few, not for the database.
pub const HEALING_READERS: usize = 8;

/// The state of the fan-out bus as the registry was told.
const NO_BUS: u8 = 0;
const BUS_DOWN: u8 = 1;
const BUS_UP: u8 = 2;

/// The instance's healing: the permits to read the store, and what an operator watches.
#[derive(Debug)]
pub struct Healing {
    readers: Semaphore,
    /// Connections with a catch-up queued or under way.
    waiting: AtomicUsize,
    /// Messages and reads delivered by catching up.
    delivered: AtomicU64,
    /// Catch-ups completed.
    healed: AtomicU64,
    bus: AtomicU8,
    /// Checks of the stream heads made, and catch-ups they queued.
    checks: AtomicU64,
    checked_behind: AtomicU64,
    /// Queries to the store made by catch-ups and by the checks of the stream heads.
    store_reads: AtomicU64,
}

impl Healing {
    pub fn new(readers: usize) -> Self {
        Self {
            readers: Semaphore::new(readers.max(1)),
            waiting: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            healed: AtomicU64::new(0),
            bus: AtomicU8::new(NO_BUS),
            checks: AtomicU64::new(0),
            checked_behind: AtomicU64::new(0),
            store_reads: AtomicU64::new(0),
        }
    }

    /// Connections waiting to catch up, or catching up.
    pub fn backlog(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Deliveries (messages, reads) made by catching up, since the start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Catch-ups completed since the start.
    pub fn healed(&self) -> u64 {
        self.healed.load(Ordering::Relaxed)
    }

    /// Whether the fan-out bus is live: `None` without one (a single instance).
    pub fn bus_up(&self) -> Option<bool> {
        match self.bus.load(Ordering::Relaxed) {
            NO_BUS => None,
            state => Some(state == BUS_UP),
        }
    }

    /// Checks of the stream heads made since the start (see [`StreamCheck`]).
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Catch-ups queued by the checks of the stream heads since the start.
    pub fn healed_by_checks(&self) -> u64 {
        self.checked_behind.load(Ordering::Relaxed)
    }

    /// Queries to the store made to heal since the start: every query of a catch-up, every
    /// batch of stream heads read by a check.
    pub fn store_reads(&self) -> u64 {
        self.store_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn record_reads(&self, queries: u64) {
        self.store_reads.fetch_add(queries, Ordering::Relaxed);
    }

    pub(crate) fn record_check(&self, queued: usize) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        self.checked_behind.fetch_add(queued as u64, Ordering::Relaxed);
    }

    /// Records the bus's state, for the metrics (the fan-out calls it).
    pub fn set_bus_up(&self, up: bool) {
        self.bus.store(if up { BUS_UP } else { BUS_DOWN }, Ordering::Relaxed);
    }

    /// Waits for a permit to read the store.
    pub(crate) async fn reader(&self) -> SemaphorePermit<'_> {
        // Never closed.
        self.readers.acquire().await.expect("the healing permits are never closed")
    }

    pub(crate) fn record(&self, delivered: usize) {
        self.delivered.fetch_add(delivered as u64, Ordering::Relaxed);
        self.healed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for Healing {
    fn default() -> Self {
        Self::new(HEALING_READERS)
    }
}

/// One connection's pending catch-up: counted in the backlog from when it is queued until
/// it is done or dropped (its connection closed first).
#[derive(Debug)]
pub struct CatchUp {
    healing: Arc<Healing>,
    /// The connection's mark that a catch-up is queued and has not started reading: while
    /// it is set, another is not needed (it reads what any loss before it left behind).
    pending: Arc<AtomicBool>,
}

impl CatchUp {
    /// A catch-up for the connection whose mark is `pending`, unless one is pending already.
    pub(crate) fn queue(healing: &Arc<Healing>, pending: &Arc<AtomicBool>) -> Option<Self> {
        if pending.swap(true, Ordering::AcqRel) {
            return None;
        }
        healing.waiting.fetch_add(1, Ordering::Relaxed);
        Some(Self { healing: healing.clone(), pending: pending.clone() })
    }

    /// Waits for a permit to read the store; from then on, a loss needs a catch-up of its own.
    pub(crate) async fn start(&self) -> SemaphorePermit<'_> {
        let permit = self.healing.reader().await;
        self.pending.store(false, Ordering::Release);
        permit
    }

    pub(crate) fn healing(&self) -> &Healing {
        &self.healing
    }
}

impl Drop for CatchUp {
    fn drop(&mut self) {
        // Never started (its connection closed): nothing is pending any more either.
        self.pending.store(false, Ordering::Release);
        self.healing.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Each is its own connection's.
impl PartialEq for CatchUp {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// The last stream position a connection was sent, as its session publishes it for the
/// registry (unknown while it replays or does not know where its stream stands).
#[derive(Debug, Clone)]
pub struct StreamPosition(Arc<AtomicU64>);

impl StreamPosition {
    const UNKNOWN: u64 = u64::MAX;

    pub(crate) fn unknown() -> Self {
        Self(Arc::new(AtomicU64::new(Self::UNKNOWN)))
    }

    pub(crate) fn set(&self, position: Option<Cursor>) {
        let value = position.map_or(Self::UNKNOWN, Cursor::position);
        self.0.store(value, Ordering::Release);
    }

    pub(crate) fn get(&self) -> Option<Cursor> {
        match self.0.load(Ordering::Acquire) {
            Self::UNKNOWN => None,
            position => Cursor::new(position).ok(),
        }
    }
}

/// The periodic check of the stream heads, without its I/O: which heads a connection may be
/// healed against. A head is trusted once it was already there one check earlier, so that
/// what is still on its way through the bus is not read twice: a connection is healed only
/// when it is behind a head seen at the previous check too.
#[derive(Debug, Default)]
pub struct StreamCheck {
    previous: HashMap<UserId, Cursor>,
}

impl StreamCheck {
    /// Takes the heads just read for the users checked; returns, for each of them, the
    /// head a connection must have reached by now: the lower of this head and the one seen
    /// at the previous check (none at a user's first check, or while their stream is empty).
    pub fn settled(&mut self, heads: Vec<(UserId, Cursor)>) -> HashMap<UserId, Cursor> {
        let mut settled = HashMap::new();
        let mut now = HashMap::with_capacity(heads.len());
        for (user, head) in heads {
            if let Some(before) = self.previous.get(&user) {
                settled.insert(user.clone(), (*before).min(head));
            }
            now.insert(user, head);
        }
        self.previous = now;
        settled
    }

    /// Every `interval`, reads the stream heads of the users with a connection on this
    /// instance, `STREAM_CHECK_BATCH` users per query, and has the connections behind a
    /// settled head catch up (see [`ConnectionRegistry::heal_behind`]). Runs until dropped.
    pub async fn run(
        mut self,
        registry: Arc<ConnectionRegistry>,
        messages: Arc<dyn MessageRepository>,
        interval: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let users = registry.users();
            let mut heads = Vec::with_capacity(users.len());
            let mut failed = false;
            for batch in users.chunks(STREAM_CHECK_BATCH) {
                registry.healing().record_reads(1);
                match messages.stream_heads(batch).await {
                    Ok(read) => heads.extend(read),
                    Err(error) => {
                        tracing::warn!(error = %error, "the stream heads could not be read; checking again later");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                continue;
            }
            let healed = registry.heal_behind(&self.settled(heads));
            if healed > 0 {
                tracing::info!(
                    connections = healed,
                    "connections behind their stream head catch up from the store"
                );
            }
        }
    }
}

/// How many users' stream heads one query of the periodic check reads.
pub const STREAM_CHECK_BATCH: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_connections_read_at_once_than_the_instance_has_permits() {
        let healing = Arc::new(Healing::new(3));
        let (reading, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let pending = Arc::new(AtomicBool::new(false));
                let catch_up = CatchUp::queue(&healing, &pending).unwrap();
                let (reading, most) = (reading.clone(), most.clone());
                tokio::spawn(async move {
                    let _permit = catch_up.start().await;
                    let now = reading.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    reading.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        assert_eq!(healing.backlog(), 50);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
        assert_eq!(healing.backlog(), 0);
    }

    #[tokio::test]
    async fn a_catch_up_is_in_the_backlog_until_dropped_and_queued_once_until_it_starts() {
        let healing = Arc::new(Healing::new(2));
        let (one, other) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let first = CatchUp::queue(&healing, &one).unwrap();
        assert!(CatchUp::queue(&healing, &one).is_none(), "one is pending already");
        let second = CatchUp::queue(&healing, &other).unwrap();
        assert_eq!(healing.backlog(), 2);
        drop(first);
        assert_eq!(healing.backlog(), 1);
        let again = CatchUp::queue(&healing, &one).expect("the dropped one is not pending");
        let _reading = again.start().await;
        let _third = CatchUp::queue(&healing, &one).expect("started: a new loss needs another");
        drop(_reading);
        drop((again, _third));
        second.healing().record(3);
        drop(second);
        assert_eq!((healing.backlog(), healing.delivered(), healing.healed()), (0, 3, 1));
        assert_eq!(healing.bus_up(), None);
        healing.set_bus_up(false);
        assert_eq!(healing.bus_up(), Some(false));
    }

    fn cursor(n: u64) -> Cursor {
        Cursor::new(n).unwrap()
    }

    #[test]
    fn a_head_is_trusted_from_the_check_after_the_one_that_first_saw_it() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let mut check = StreamCheck::default();
        assert!(check.settled(vec![(a.clone(), cursor(3))]).is_empty(), "first seen: may be on its way");
        let settled = check.settled(vec![(a.clone(), cursor(5)), (b.clone(), cursor(2))]);
        assert_eq!(settled, HashMap::from([(a.clone(), cursor(3))]), "the head one check old, b new");
        let settled = check.settled(vec![(a.clone(), cursor(5)), (b.clone(), cursor(2))]);
        assert_eq!(settled, HashMap::from([(a.clone(), cursor(5)), (b.clone(), cursor(2))]));
        assert!(check.settled(vec![(b.clone(), cursor(4))]).contains_key(&b));
        assert!(check.settled(vec![(a.clone(), cursor(6))]).is_empty(), "a was not checked last time");
    }

    #[test]
    fn a_stream_position_is_unknown_until_set() {
        let position = StreamPosition::unknown();
        assert_eq!(position.get(), None);
        position.set(Some(cursor(7)));
        assert_eq!(position.clone().get(), Some(cursor(7)));
        position.set(None);
        assert_eq!(position.get(), None);
    }
}
