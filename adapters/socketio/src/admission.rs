//! Who may open an Engine.IO session. A handshake creates a session (a task, two channels,
//! a map entry) before anyone is authenticated, since Socket.IO authenticates at `CONNECT`,
//! later. So handshakes are rate-limited per client address (a token bucket, `governor`, as
//! the HTTP adapter's limits) and open sessions are capped, in all and per client address.
//!
//! No IO here: the engine asks at each handshake and reports each session's end; the
//! transport turns a [`Refusal`] into Engine.IO's error answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Limits on what a client can hold or repeat before it authenticates; 0 switches one off.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionLimits {
    /// Open sessions on this instance, joined to the namespace or not.
    pub max_sessions: usize,
    /// Open sessions per client address.
    pub max_sessions_per_address: usize,
    /// Handshakes per client address per minute, in bursts of as many.
    pub handshakes_per_minute_per_address: u32,
}

/// A client address; `None` when the peer is unknown (not over TCP): such requests share one.
pub(crate) type Address = Option<IpAddr>;

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address used up its handshakes; its next one is allowed after `retry_after`.
    HandshakeRate { retry_after: Duration },
    /// The address holds as many sessions as it may.
    AddressFull,
    /// This instance holds as many sessions as it may.
    ServerFull,
}

/// The handshake allowance of each client address.
pub(crate) struct HandshakeRate {
    limiter: Option<DefaultKeyedRateLimiter<Address>>,
    checks: AtomicU32,
}

impl HandshakeRate {
    pub(crate) fn new(per_minute: u32) -> Self {
        let limiter = NonZeroU32::new(per_minute).and_then(|count| {
            let quota = Quota::with_period(Duration::from_secs(60) / count.get())?.allow_burst(count);
            Some(RateLimiter::keyed(quota))
        });
        Self { limiter, checks: AtomicU32::new(0) }
    }

    /// Takes one handshake from `address`'s allowance.
    pub(crate) fn check(&self, address: Address) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        // Forget addresses whose bucket is full again now and then, so that handshakes from
        // many addresses don't grow the map for good.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&address).map_err(|not_until| Refusal::HandshakeRate {
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

/// The open sessions, in all and per client address. Kept beside the session map, under
/// the same lock, so that a handshake's check and its session's insertion are one step.
#[derive(Debug, Default)]
pub(crate) struct Occupancy {
    total: usize,
    per_address: HashMap<Address, usize>,
}

impl Occupancy {
    /// Counts a new session of `address`, unless a cap is reached.
    pub(crate) fn admit(&mut self, address: Address, limits: &SessionLimits) -> Result<(), Refusal> {
        if limits.max_sessions > 0 && self.total >= limits.max_sessions {
            return Err(Refusal::ServerFull);
        }
        let held = self.per_address.get(&address).copied().unwrap_or(0);
        if limits.max_sessions_per_address > 0 && held >= limits.max_sessions_per_address {
            return Err(Refusal::AddressFull);
        }
        self.total += 1;
        self.per_address.insert(address, held + 1);
        Ok(())
    }

    /// A session of `address` ended; an address without sessions is forgotten.
    pub(crate) fn release(&mut self, address: Address) {
        self.total = self.total.saturating_sub(1);
        if let Some(held) = self.per_address.get_mut(&address) {
            *held -= 1;
            if *held == 0 {
                self.per_address.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Address {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn limits(max_sessions: usize, max_sessions_per_address: usize) -> SessionLimits {
        SessionLimits { max_sessions, max_sessions_per_address, handshakes_per_minute_per_address: 0 }
    }

    #[test]
    fn an_address_holds_at_most_its_cap_while_others_still_get_in() {
        let limits = limits(0, 2);
        let mut open = Occupancy::default();
        assert_eq!(open.admit(ip(1), &limits), Ok(()));
        assert_eq!(open.admit(ip(1), &limits), Ok(()));
        assert_eq!(open.admit(ip(1), &limits), Err(Refusal::AddressFull));
        assert_eq!(open.admit(ip(2), &limits), Ok(()));
    }

    #[test]
    fn the_instance_holds_at_most_its_cap_whatever_the_addresses() {
        let limits = limits(3, 2);
        let mut open = Occupancy::default();
        for address in [ip(1), ip(2), ip(3)] {
            assert_eq!(open.admit(address, &limits), Ok(()));
        }
        assert_eq!(open.admit(ip(4), &limits), Err(Refusal::ServerFull));
    }

    #[test]
    fn an_ended_session_frees_its_place_and_idle_addresses_are_forgotten() {
        let limits = limits(1, 1);
        let mut open = Occupancy::default();
        assert_eq!(open.admit(ip(1), &limits), Ok(()));
        assert_eq!(open.admit(ip(1), &limits), Err(Refusal::ServerFull));
        open.release(ip(1));
        assert!(open.per_address.is_empty());
        assert_eq!(open.admit(ip(2), &limits), Ok(()));
    }

    #[test]
    fn zero_caps_mean_no_cap() {
        let mut open = Occupancy::default();
        for _ in 0..10_000 {
            assert_eq!(open.admit(ip(1), &limits(0, 0)), Ok(()));
        }
    }

    #[test]
    fn handshakes_are_limited_per_address_with_a_time_to_wait() {
        let rate = HandshakeRate::new(3);
        for _ in 0..3 {
            assert_eq!(rate.check(ip(1)), Ok(()));
        }
        match rate.check(ip(1)) {
            // One handshake comes back every 20 s.
            Err(Refusal::HandshakeRate { retry_after }) => {
                assert!(
                    retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20),
                    "{retry_after:?}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(rate.check(ip(2)), Ok(()), "another address has its own allowance");
    }

    #[test]
    fn a_zero_handshake_rate_means_no_limit() {
        let rate = HandshakeRate::new(0);
        for _ in 0..10_000 {
            assert_eq!(rate.check(ip(1)), Ok(()));
        }
    }
}
