//! Rate limits on what a client can repeat: logins and registrations (brute force, per IP and
//! per username), message sends (per user) and socket connections (per user).
//!
//! Limits are kept in this instance's memory (token buckets, `governor`). Behind a load
//! balancer with N instances a client could get up to N times the limit; pinning clients to
//! an instance (sticky sessions by IP) keeps the per-IP limits exact.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_web::HttpRequest;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Allowances; 0 switches a limit off.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LimitSettings {
    pub login_per_minute_per_ip: u32,
    pub login_per_minute_per_username: u32,
    pub register_per_hour_per_ip: u32,
    pub sends_per_second_per_user: u32,
    pub socket_connects_per_minute_per_user: u32,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy that sets it).
    pub trust_forwarded_for: bool,
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
    login_username: Option<Limit>,
    register_ip: Option<Limit>,
    send_user: Option<Limit>,
    connect_user: Option<Limit>,
    trust_forwarded_for: bool,
    checks: AtomicU32,
}

const MINUTE: Duration = Duration::from_secs(60);

impl RateLimits {
    pub fn new(settings: &LimitSettings) -> Self {
        Self {
            login_ip: Limit::new(settings.login_per_minute_per_ip, MINUTE),
            login_username: Limit::new(settings.login_per_minute_per_username, MINUTE),
            register_ip: Limit::new(settings.register_per_hour_per_ip, MINUTE * 60),
            send_user: Limit::new(settings.sends_per_second_per_user, Duration::from_secs(1)),
            connect_user: Limit::new(settings.socket_connects_per_minute_per_user, MINUTE),
            trust_forwarded_for: settings.trust_forwarded_for,
            checks: AtomicU32::new(0),
        }
    }

    pub fn login(&self, req: &HttpRequest, username: &str) -> Result<(), ApiError> {
        self.apply(&self.login_ip, self.client_ip(req))?;
        self.apply(&self.login_username, username.to_ascii_lowercase())
    }

    pub fn register(&self, req: &HttpRequest) -> Result<(), ApiError> {
        self.apply(&self.register_ip, self.client_ip(req))
    }

    pub fn send(&self, user: &str) -> Result<(), ApiError> {
        self.apply(&self.send_user, user.to_owned())
    }

    pub fn socket_connect(&self, user: &str) -> Result<(), ApiError> {
        self.apply(&self.connect_user, user.to_owned())
    }

    fn apply(&self, limit: &Option<Limit>, key: String) -> Result<(), ApiError> {
        let Some(limit) = limit else { return Ok(()) };
        // Forget idle keys now and then so the maps stay small.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            for l in [&self.login_ip, &self.login_username, &self.register_ip, &self.send_user, &self.connect_user]
                .into_iter()
                .flatten()
            {
                l.limiter.retain_recent();
                l.limiter.shrink_to_fit();
            }
        }
        limit.check(key)
    }

    fn client_ip(&self, req: &HttpRequest) -> String {
        let forwarded = self
            .trust_forwarded_for
            .then(|| req.headers().get("x-forwarded-for"))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        forwarded
            .or_else(|| req.peer_addr().map(|a| a.ip()))
            .map(|ip| ip.to_string())
            .unwrap_or_default()
    }
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
            socket_connects_per_minute_per_user: 1,
            trust_forwarded_for: false,
        }
    }

    #[test]
    fn logins_are_limited_per_username_across_addresses() {
        let limits = RateLimits::new(&settings());
        let a = TestRequest::default().peer_addr("10.0.0.1:1".parse().unwrap()).to_http_request();
        let b = TestRequest::default().peer_addr("10.0.0.2:1".parse().unwrap()).to_http_request();
        assert!(limits.login(&a, "Alice").is_ok());
        assert!(limits.login(&b, "alice").is_ok());
        let refused = limits.login(&a, "ALICE").unwrap_err();
        assert_eq!(refused.code(), "RATE_LIMITED");
        // Another account from the same address is still allowed.
        assert!(limits.login(&a, "bob").is_ok());
    }

    #[test]
    fn logins_are_limited_per_address() {
        let limits = RateLimits::new(&settings());
        let a = TestRequest::default().peer_addr("10.0.0.1:1".parse().unwrap()).to_http_request();
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
    fn forwarded_addresses_count_only_when_trusted() {
        let limits = RateLimits::new(&settings());
        let spoofed = |ip: &str| {
            TestRequest::default()
                .peer_addr("10.0.0.9:1".parse().unwrap())
                .insert_header(("x-forwarded-for", ip))
                .to_http_request()
        };
        assert!(limits.register(&spoofed("1.1.1.1")).is_ok());
        assert!(limits.register(&spoofed("2.2.2.2")).is_err(), "the header is ignored by default");

        let trusting = RateLimits::new(&LimitSettings { trust_forwarded_for: true, ..settings() });
        assert!(trusting.register(&spoofed("1.1.1.1")).is_ok());
        assert!(trusting.register(&spoofed("2.2.2.2")).is_ok());
    }
}
