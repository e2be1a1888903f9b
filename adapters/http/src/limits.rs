//! Rate limits on what a client can repeat: logins and registrations (brute force, per address
//! and per username), message sends (per user) and socket connections (per user), and where
//! a request's client address is read ([`client_ip`]).
//!
//! Limits are kept in this instance's memory. Behind a load balancer with N instances a
//! client could get up to N times the limit; pinning clients to an instance (sticky sessions
//! by address) keeps the per-address limits exact.
//!
//! Logins are limited two ways. Attempts are counted per address (token buckets, `governor`),
//! which stops one address from spraying passwords over many accounts. Per username only
//! *failures* are counted ([`LoginFailures`]): were attempts counted, anyone could lock an
//! account by sending a few wrong passwords for it. Once a username has had its allowance of
//! failures in the last minute, addresses that failed on it get 429 without a password check,
//! while an address with no recent failure on it still has its password checked: the owner
//! logs in, and a wrong password from there is answered 429 too.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::state::AppState;

/// Allowances; 0 switches a limit off.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LimitSettings {
    /// Login attempts (right or wrong) per client address.
    pub login_per_minute_per_ip: u32,
    /// Failed logins per username, from any address.
    pub login_per_minute_per_username: u32,
    pub register_per_hour_per_ip: u32,
    pub sends_per_second_per_user: u32,
    /// User searches (`get-other-users?search=`) per user, in bursts of as many.
    pub searches_per_second_per_user: u32,
    pub socket_connects_per_minute_per_user: u32,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
    /// With `trust_forwarded_for`: how many proxies in front of the server append to
    /// `X-Forwarded-For` (at least 1). The client address is the entry this far from the
    /// right: what the outermost trusted proxy saw. Entries left of it are the client's own.
    pub trusted_proxies: u32,
}

struct Limit {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl Limit {
    fn new(count: u32, per: Duration) -> Option<Self> {
        let count = NonZeroU32::new(count)?;
        let quota = Quota::with_period(per / count.get())?.allow_burst(count);
        Some(Self { limiter: RateLimiter::keyed(quota) })
    }

    fn check(&self, key: String) -> Result<(), ApiError> {
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::rate_limited(wait.as_secs().max(1))
        })
    }
}

pub struct RateLimits {
    login_ip: Option<Limit>,
    login_failures: Option<LoginFailures>,
    register_ip: Option<Limit>,
    send_user: Option<Limit>,
    search_user: Option<Limit>,
    connect_user: Option<Limit>,
    client_address: ClientAddress,
    checks: AtomicU32,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            login_ip: Limit::new(settings.login_per_minute_per_ip, MINUTE),
            login_failures: LoginFailures::new(settings.login_per_minute_per_username, MINUTE),
            register_ip: Limit::new(settings.register_per_hour_per_ip, MINUTE * 60),
            send_user: Limit::new(settings.sends_per_second_per_user, Duration::from_secs(1)),
            search_user: Limit::new(settings.searches_per_second_per_user, Duration::from_secs(1)),
            connect_user: Limit::new(settings.socket_connects_per_minute_per_user, MINUTE),
            client_address: ClientAddress::new(settings),
            checks: AtomicU32::new(0),
        }
    }

    /// Admits a login attempt before its password is checked; report a wrong password with
    /// [`LoginAttempt::failed`].
    pub fn login(&self, req: &HttpRequest, username: &str) -> Result<LoginAttempt<'_>, ApiError> {
        let address = self.client_address.key(req);
        self.apply(&self.login_ip, address.clone())?;
        let attempt = LoginAttempt { limits: self, username: username.to_ascii_lowercase(), address };
        if let Some(failures) = &self.login_failures {
            failures.admit(&attempt.username, &attempt.address, Instant::now())?;
        }
        Ok(attempt)
    }

    pub fn register(&self, req: &HttpRequest) -> Result<(), ApiError> {
        self.apply(&self.register_ip, self.client_address.key(req))
    }

    pub fn send(&self, user: &str) -> Result<(), ApiError> {
        self.apply(&self.send_user, user.to_owned())
    }

    pub fn search(&self, user: &str) -> Result<(), ApiError> {
        self.apply(&self.search_user, user.to_owned())
    }

    pub fn socket_connect(&self, user: &str) -> Result<(), ApiError> {
        self.apply(&self.connect_user, user.to_owned())
    }

    fn apply(&self, limit: &Option<Limit>, key: String) -> Result<(), ApiError> {
        let Some(limit) = limit else { return Ok(()) };
        // Forget idle keys now and then so the maps stay small.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            for l in
                [&self.login_ip, &self.register_ip, &self.send_user, &self.search_user, &self.connect_user]
                    .into_iter()
                    .flatten()
            {
                l.limiter.retain_recent();
                l.limiter.shrink_to_fit();
            }
            if let Some(failures) = &self.login_failures {
                failures.forget_old(Instant::now());
            }
        }
        limit.check(key)
    }
}

/// A login admitted by [`RateLimits::login`], whose password is being checked.
pub struct LoginAttempt<'a> {
    limits: &'a RateLimits,
    /// Lower-cased: `Alice` and `alice` share one allowance.
    username: String,
    address: String,
}

impl LoginAttempt<'_> {
    /// Counts a wrong password; `Err` (429) when the username was already at its allowance
    /// of failures, to be answered instead of the 401.
    pub fn failed(self) -> Result<(), ApiError> {
        let Some(failures) = &self.limits.login_failures else { return Ok(()) };
        failures.record(&self.username, &self.address, Instant::now())
    }
}

/// Failed logins of the last `window`: per username (the latest `allowed` of them, enough to
/// tell whether it is at its allowance) and per username and address (the latest one).
///
/// A sliding window rather than a token bucket: what is asked is whether a username is at
/// its allowance without spending any of it, which `governor` can't answer.
struct LoginFailures {
    allowed: usize,
    window: Duration,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_username: HashMap<String, VecDeque<Instant>>,
    /// Keyed by (username, address).
    by_address: HashMap<(String, String), Instant>,
}

impl LoginFailures {
    fn new(allowed: u32, window: Duration) -> Option<Self> {
        let allowed = usize::try_from(allowed).ok().filter(|n| *n > 0)?;
        Some(Self { allowed, window, seen: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Every update leaves the maps consistent, so a panic elsewhere poisons nothing real.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` (429) when `username` is at its allowance and `address` failed on it lately:
    /// that address is the guesser, and its password is not checked at all.
    fn admit(&self, username: &str, address: &str, now: Instant) -> Result<(), ApiError> {
        let seen = self.lock();
        let Some(wait) = self.exhausted(&seen, username, now) else { return Ok(()) };
        let key = (username.to_owned(), address.to_owned());
        match seen.by_address.get(&key) {
            Some(last) if now.saturating_duration_since(*last) < self.window => Err(retry_after(wait)),
            _ => Ok(()),
        }
    }

    /// Counts a failure; `Err` (429) when `username` was at its allowance already.
    fn record(&self, username: &str, address: &str, now: Instant) -> Result<(), ApiError> {
        let mut seen = self.lock();
        let before = self.exhausted(&seen, username, now);
        let times = seen.by_username.entry(username.to_owned()).or_default();
        times.push_back(now);
        if times.len() > self.allowed {
            times.pop_front();
        }
        seen.by_address.insert((username.to_owned(), address.to_owned()), now);
        before.map_or(Ok(()), |wait| Err(retry_after(wait)))
    }

    /// How long until `username` is below its allowance, if it is at it now.
    fn exhausted(&self, seen: &Seen, username: &str, now: Instant) -> Option<Duration> {
        let times = seen.by_username.get(username)?;
        let oldest = times.front()?;
        let recent = times.iter().filter(|t| now.saturating_duration_since(**t) < self.window).count();
        (recent >= self.allowed).then(|| self.window.saturating_sub(now.saturating_duration_since(*oldest)))
    }

    fn forget_old(&self, now: Instant) {
        let window = self.window;
        let mut seen = self.lock();
        seen.by_username.retain(|_, times| {
            times.back().is_some_and(|last| now.saturating_duration_since(*last) < window)
        });
        seen.by_address.retain(|_, last| now.saturating_duration_since(*last) < window);
        seen.by_username.shrink_to_fit();
        seen.by_address.shrink_to_fit();
    }
}

fn retry_after(wait: Duration) -> ApiError {
    ApiError::rate_limited(wait.as_secs().max(1))
}

/// Where a request's client address is read: the TCP peer, or, behind trusted proxies, the
/// `X-Forwarded-For` entry the outermost of them wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientAddress {
    /// 0: the header is ignored.
    trusted_proxies: usize,
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

impl ClientAddress {
    const PEER: Self = Self { trusted_proxies: 0 };

    fn new(settings: &LimitSettings) -> Self {
        if !settings.trust_forwarded_for {
            return Self::PEER;
        }
        // Settings refuse 0 with trust on; should one slip through, 1 is the safe reading.
        let proxies = usize::try_from(settings.trusted_proxies).unwrap_or(usize::MAX);
        Self { trusted_proxies: proxies.max(1) }
    }

    fn of(self, req: &HttpRequest) -> Option<IpAddr> {
        self.forwarded(req).or_else(|| req.peer_addr().map(|a| a.ip()))
    }

    /// The key of the per-address limits.
    fn key(self, req: &HttpRequest) -> String {
        self.of(req).map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Each proxy appends the address it saw on the right, so the rightmost `trusted_proxies`
    /// entries are the proxies' own and anything left of them is whatever the client sent.
    /// With fewer entries the request passed fewer proxies, and the leftmost entry was still
    /// written by one of them. An entry that is no address means a misconfigured proxy: the
    /// peer is used rather than anything the client could have chosen.
    fn forwarded(self, req: &HttpRequest) -> Option<IpAddr> {
        if self.trusted_proxies == 0 {
            return None;
        }
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let entries: Vec<&[u8]> = req
            .headers()
            .get_all(X_FORWARDED_FOR)
            .flat_map(|value| value.as_bytes().split(|b| *b == b','))
            .collect();
        let chosen = entries.get(entries.len().saturating_sub(self.trusted_proxies))?;
        let text = std::str::from_utf8(chosen).ok()?.trim();
        // Some proxies add the client's port: `203.0.113.7:4711`, `[2001:db8::1]:4711`.
        text.parse::<IpAddr>().ok().or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
    }
}

/// The address of the client that sent `req`, as the per-address limits see it: the TCP
/// peer, or, with `limits.trust_forwarded_for`, the `X-Forwarded-For` entry written by the
/// outermost of `limits.trusted_proxies` proxies (never one the client wrote). `None` when
/// the peer is unknown. For any handler of [`crate::app`], e.g. per-address caps elsewhere.
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    req.app_data::<web::Data<AppState>>()
        .map_or(ClientAddress::PEER, |state| state.limits.client_address)
        .of(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn settings() -> LimitSettings {
        LimitSettings {
            login_per_minute_per_ip: 3,
            login_per_minute_per_username: 2,
            register_per_hour_per_ip: 1,
            sends_per_second_per_user: 0,
            searches_per_second_per_user: 2,
            socket_connects_per_minute_per_user: 1,
            trust_forwarded_for: false,
            trusted_proxies: 1,
        }
    }

    fn from(ip: &str) -> HttpRequest {
        TestRequest::default().peer_addr(SocketAddr::new(ip.parse().unwrap(), 1)).to_http_request()
    }

    /// A request through one proxy at 10.0.0.9 that appended `forwarded` to the client's header.
    fn forwarded(forwarded: &str) -> HttpRequest {
        TestRequest::default()
            .peer_addr("10.0.0.9:1".parse().unwrap())
            .insert_header(("x-forwarded-for", forwarded))
            .to_http_request()
    }

    fn trusting(proxies: u32) -> LimitSettings {
        LimitSettings { trust_forwarded_for: true, trusted_proxies: proxies, ..settings() }
    }

    #[test]
    fn right_passwords_are_not_limited_per_username() {
        let limits = RateLimits::new(&LimitSettings { login_per_minute_per_ip: 0, ..settings() });
        for _ in 0..10 {
            limits.login(&from("10.0.0.1"), "alice").unwrap();
        }
    }

    #[test]
    fn failures_beyond_the_allowance_are_refused_from_the_failing_address() {
        let limits = RateLimits::new(&LimitSettings { login_per_minute_per_ip: 0, ..settings() });
        let guesser = from("10.0.0.1");
        limits.login(&guesser, "Alice").unwrap().failed().unwrap();
        limits.login(&guesser, "alice").unwrap().failed().unwrap();
        // At the allowance: refused before any password check, whatever the case.
        let refused = limits.login(&guesser, "ALICE").err().unwrap();
        assert_eq!(refused.code(), "RATE_LIMITED");
        // Another account from the same address is not affected.
        limits.login(&guesser, "bob").unwrap().failed().unwrap();
    }

    #[test]
    fn an_address_without_failures_still_gets_its_password_checked() {
        let limits = RateLimits::new(&LimitSettings { login_per_minute_per_ip: 0, ..settings() });
        for _ in 0..2 {
            limits.login(&from("10.0.0.1"), "alice").unwrap().failed().unwrap();
        }
        assert!(limits.login(&from("10.0.0.1"), "alice").is_err());
        // The owner, elsewhere: admitted, so a right password logs in ...
        limits.login(&from("10.0.0.2"), "alice").unwrap();
        // ... and a wrong one is answered 429, after which that address is refused too.
        let wrong = limits.login(&from("10.0.0.3"), "alice").unwrap().failed().unwrap_err();
        assert_eq!(wrong.code(), "RATE_LIMITED");
        assert!(limits.login(&from("10.0.0.3"), "alice").is_err());
    }

    #[test]
    fn failures_leave_the_window_after_it() {
        let failures = LoginFailures::new(2, MINUTE).unwrap();
        let start = Instant::now();
        failures.record("alice", "a", start).unwrap();
        failures.record("alice", "a", start + Duration::from_secs(30)).unwrap();
        assert!(failures.admit("alice", "a", start + Duration::from_secs(59)).is_err());
        // The first failure left the window: below the allowance again.
        assert!(failures.admit("alice", "a", start + Duration::from_secs(61)).is_ok());
        failures.forget_old(start + Duration::from_secs(200));
        assert!(failures.lock().by_username.is_empty() && failures.lock().by_address.is_empty());
    }

    #[test]
    fn a_zero_failure_allowance_means_no_username_limit() {
        let limits = RateLimits::new(&LimitSettings {
            login_per_minute_per_ip: 0,
            login_per_minute_per_username: 0,
            ..settings()
        });
        for _ in 0..100 {
            limits.login(&from("10.0.0.1"), "alice").unwrap().failed().unwrap();
        }
    }

    #[test]
    fn logins_are_limited_per_address() {
        let limits = RateLimits::new(&settings());
        let a = from("10.0.0.1");
        for name in ["u1", "u2", "u3"] {
            assert!(limits.login(&a, name).is_ok());
        }
        assert!(limits.login(&a, "u4").is_err());
    }

    #[test]
    fn a_zero_allowance_means_no_limit() {
        let limits = RateLimits::new(&settings());
        for _ in 0..1000 {
            assert!(limits.send("someone").is_ok());
        }
    }

    #[test]
    fn searches_are_limited_per_user() {
        let limits = RateLimits::new(&settings());
        assert!(limits.search("alice").is_ok());
        assert!(limits.search("alice").is_ok());
        assert_eq!(limits.search("alice").unwrap_err().code(), "RATE_LIMITED");
        // Another user's searches have an allowance of their own.
        assert!(limits.search("bob").is_ok());
    }

    #[test]
    fn forwarded_addresses_count_only_when_trusted() {
        let limits = RateLimits::new(&settings());
        assert!(limits.register(&forwarded("1.1.1.1")).is_ok());
        assert!(limits.register(&forwarded("2.2.2.2")).is_err(), "the header is ignored by default");

        let trusting = RateLimits::new(&trusting(1));
        assert!(trusting.register(&forwarded("1.1.1.1")).is_ok());
        assert!(trusting.register(&forwarded("2.2.2.2")).is_ok());
    }

    #[test]
    fn a_forged_leftmost_entry_does_not_change_the_address() {
        let limits = RateLimits::new(&trusting(1));
        // The proxy appended the real address (203.0.113.7) to what the client sent.
        assert!(limits.register(&forwarded("1.1.1.1, 203.0.113.7")).is_ok());
        assert!(limits.register(&forwarded("2.2.2.2, 203.0.113.7")).is_err());
        assert!(limits.register(&forwarded("203.0.113.7")).is_err());
    }

    #[test]
    fn the_address_is_read_past_the_trusted_proxies_from_the_right() {
        let of = |proxies, header: &str| ClientAddress::new(&trusting(proxies)).of(&forwarded(header));
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(of(1, "6.6.6.6, 203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(of(2, "6.6.6.6, 203.0.113.7, 198.51.100.1"), ip("203.0.113.7"));
        // Fewer entries than proxies: the leftmost was still written by a proxy.
        assert_eq!(of(2, "203.0.113.7"), ip("203.0.113.7"));
        // Ports and IPv6.
        assert_eq!(of(1, "6.6.6.6, 203.0.113.7:4711"), ip("203.0.113.7"));
        assert_eq!(of(1, "[2001:db8::1]:4711"), ip("2001:db8::1"));
        assert_eq!(of(1, " 2001:db8::2 "), ip("2001:db8::2"));
        // No header, or no address where the proxy should have written one: the peer.
        assert_eq!(ClientAddress::new(&trusting(1)).of(&from("10.0.0.5")), ip("10.0.0.5"));
        assert_eq!(of(1, "203.0.113.7, unknown"), ip("10.0.0.9"));
    }

    #[test]
    fn several_header_lines_are_one_list() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.9:1".parse().unwrap())
            .append_header(("x-forwarded-for", "6.6.6.6"))
            .append_header(("x-forwarded-for", "7.7.7.7, 203.0.113.7"))
            .to_http_request();
        assert_eq!(ClientAddress::new(&trusting(1)).of(&req), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(ClientAddress::new(&trusting(3)).of(&req), Some("6.6.6.6".parse().unwrap()));
    }

    #[test]
    fn client_ip_is_the_peer_outside_the_app() {
        assert_eq!(client_ip(&forwarded("6.6.6.6")), Some("10.0.0.9".parse().unwrap()));
    }
}
