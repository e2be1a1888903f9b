//! Healing live delivery: bringing every connection of this instance up to date from the
//! store when live events may have been lost on their way (the fan-out bus was cut, or
//! resubscribed), with the number of connections reading the store at once bounded.
//!
//! [`ConnectionRegistry::heal`](crate::ConnectionRegistry::heal) queues a
//! [`Queued::CatchUp`](crate::Queued::CatchUp) behind whatever each connection has queued;
//! its [`Follow`](crate::Follow) then reads the store after its cursor (as its replay
//! does), under one of the instance's permits, and sends what it had not had, in order. What
//! it already had is not read again; the live events queued behind it are repeats then.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Semaphore, SemaphorePermit};

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
}

impl Healing {
    pub fn new(readers: usize) -> Self {
        Self {
            readers: Semaphore::new(readers.max(1)),
            waiting: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            healed: AtomicU64::new(0),
            bus: AtomicU8::new(NO_BUS),
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
}
