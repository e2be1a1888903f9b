//! `login`: C workers log in as fast as the server lets them while a prober fetches
//! `get-profile` at a steady pace. bcrypt must not block the workers that serve the prober,
//! so its latency should stay low while logins saturate the cores.
//!
//! `bcrypt-baseline`: the ceiling logins are compared with, cores ÷ one hash's time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::api::{run_prefix, Api};
use crate::report::{round, rss_kib, Latency, Report};
use crate::Target;

#[derive(Args, Clone)]
pub struct LoginArgs {
    /// Concurrent logins.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds of the storm.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Milliseconds between two profile probes.
    #[arg(long, default_value_t = 10)]
    pub probe_every_ms: u64,
    /// The server's bcrypt cost, for the in-process ceiling.
    #[arg(long, default_value_t = 10)]
    pub cost: u32,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

#[derive(Args, Clone)]
pub struct BaselineArgs {
    #[arg(long, default_value_t = 10)]
    pub cost: u32,
    /// Hashes to time; the median counts.
    #[arg(long, default_value_t = 7)]
    pub hashes: usize,
}

/// The median time of one bcrypt hash at `cost`, and the number of cores.
async fn hash_time(cost: u32, hashes: usize) -> anyhow::Result<(Duration, usize)> {
    let mut times = Vec::new();
    for _ in 0..hashes.max(1) {
        let time = tokio::task::spawn_blocking(move || {
            let begun = Instant::now();
            bcrypt::hash("loadgen-password", cost).map(|_| begun.elapsed())
        })
        .await??;
        times.push(time);
    }
    times.sort();
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    Ok((times[times.len() / 2], cores))
}

pub async fn baseline(args: BaselineArgs) -> anyhow::Result<Report> {
    let (time, cores) = hash_time(args.cost, args.hashes).await?;
    let ceiling = cores as f64 / time.as_secs_f64();
    let mut report = Report::new("bcrypt-baseline");
    report
        .line(format!(
            "one bcrypt hash at cost {}: {:.1} ms (median of {}); {cores} cores -> ceiling {ceiling:.1} hashes/s",
            args.cost,
            time.as_secs_f64() * 1000.0,
            args.hashes
        ))
        .field("cost", args.cost)
        .field("hash_ms", round(time.as_secs_f64() * 1000.0))
        .field("cores", cores as u64)
        .field("ceiling_per_s", round(ceiling));
    Ok(report)
}

pub async fn run(target: &Target, args: LoginArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let users = api
        .register_many(
            &run_prefix("l"),
            args.concurrency.max(1) + 1,
            &target.password,
            target.setup_concurrency,
        )
        .await?;
    let (prober, loggers) = users.split_last().expect("at least two users were registered");

    let (hash, cores) = hash_time(args.cost, 5).await?;
    let ceiling = cores as f64 / hash.as_secs_f64();

    // The profile latency of an idle server, for comparison.
    let mut idle = Latency::default();
    for _ in 0..100 {
        let begun = Instant::now();
        if api.profile(&prober.token).await?.is_success() {
            idle.record(begun.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(args.probe_every_ms)).await;
    }

    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut workers = Vec::new();
    for user in loggers {
        let api = api.clone();
        let username = user.username.clone();
        let password = target.password.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = Latency::default();
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            let mut ok = 0u64;
            while Instant::now() < deadline {
                let begun = Instant::now();
                match api.login(&username, &password).await {
                    Ok(status) if status.is_success() => {
                        latency.record(begun.elapsed());
                        ok += 1;
                    }
                    Ok(status) => *failures.entry(format!("http_{}", status.as_u16())).or_default() += 1,
                    Err(_) => *failures.entry("transport_error".into()).or_default() += 1,
                }
            }
            (ok, latency, failures)
        }));
    }
    let probe = {
        let api = api.clone();
        let token = prober.token.clone();
        let every = Duration::from_millis(args.probe_every_ms.max(1));
        tokio::spawn(async move {
            let mut latency = Latency::default();
            let mut failed = 0u64;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < deadline {
                tick.tick().await;
                let begun = Instant::now();
                match api.profile(&token).await {
                    Ok(status) if status.is_success() => latency.record(begun.elapsed()),
                    _ => failed += 1,
                }
            }
            (latency, failed)
        })
    };
    let mut logins = 0u64;
    let mut login_latency = Latency::default();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        let (ok, latency, f) = worker.await?;
        logins += ok;
        login_latency.merge(&latency);
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (profile, profile_failed) = probe.await?;
    let per_second = logins as f64 / elapsed;
    let ratio = per_second / ceiling;

    let mut report = Report::new("login");
    report
        .line(format!(
            "bcrypt cost {}: {:.1} ms per hash, {cores} cores -> ceiling {ceiling:.1} logins/s",
            args.cost,
            hash.as_secs_f64() * 1000.0
        ))
        .line(format!(
            "{logins} logins in {elapsed:.2} s = {per_second:.1} logins/s = {:.0}% of the ceiling, failed {failures:?}",
            ratio * 100.0
        ))
        .line(format!("login latency              {}", login_latency.human()))
        .line(format!("get-profile, idle          {}", idle.human()))
        .line(format!("get-profile, during storm  {}  failed {profile_failed}", profile.human()))
        .field("transport", target.transport.name())
        .field("concurrency", args.concurrency as u64)
        .field("cost", args.cost)
        .field("hash_ms", round(hash.as_secs_f64() * 1000.0))
        .field("cores", cores as u64)
        .field("ceiling_per_s", round(ceiling))
        .field("logins", logins)
        .field("logins_per_s", round(per_second))
        .field("ratio_to_ceiling", round(ratio))
        .field("failures", json!(failures))
        .field("login_latency", login_latency.json())
        .field("profile_idle", idle.json())
        .field("profile_during_storm", profile.json())
        .field("profile_failed", profile_failed);
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}
