//! `connect`: opens K idle sockets spread over U users (connections/s), reads the server's
//! RSS before and after (KiB per connection) and the CPU time the server and the load
//! generator spent connecting, then measures delivery on a few live pairs while every idle
//! socket stays open.
//!
//! Spreading the sockets over fewer users than sockets matters: each user coming online is
//! announced to every open socket (`onlineUsers`), so K distinct users cost O(K²) frames.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::{watch, Semaphore};

use super::send::{run_pairs, setup_pairs, Phase};
use crate::api::{run_prefix, Api};
use crate::report::{cpu_seconds, round, rss_kib, Report};
use crate::socket::{self, Ended};
use crate::Target;

#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// Idle sockets to open.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Users the idle sockets belong to (round-robin).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Live sender/receiver pairs measured while the idle sockets are open.
    #[arg(long, default_value_t = 4)]
    pub live_pairs: usize,
    /// Sends/s over the live pairs.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of live sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait after the last connection before reading the RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Loopback source addresses the idle sockets are spread over, round-robin: 127.0.0.1,
    /// 127.0.0.2, … Each has its own ephemeral ports (about 28,000 here), so 100,000 sockets
    /// need at least 4.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addresses: u8,
    /// Server process id, to read its RSS and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub async fn run(target: &Target, args: ConnectArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let prefix = run_prefix("c");
    let users = api
        .register_many(
            &format!("{prefix}i"),
            args.users.clamp(1, args.sockets.max(1)),
            &target.password,
            target.setup_concurrency,
        )
        .await?;
    let pairs = setup_pairs(&api, target, args.live_pairs.max(1), &format!("{prefix}p")).await?;

    let rss_before = args.server_pid.and_then(rss_kib);
    let (stop, stopped) = watch::channel(false);
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let timeout = Duration::from_secs_f64(target.timeout);
    let ws_base = api.ws_base();
    // CPU seconds of the server and of this load generator, which share the machine.
    let cpu = || (args.server_pid.and_then(cpu_seconds), cpu_seconds(std::process::id()));
    let cpu_before = cpu();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let slot = slots.clone().acquire_owned().await?;
        let token = users[i % users.len()].token.clone();
        let (ws_base, transport) = (ws_base.clone(), target.transport);
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.source_addresses)) as u8));
        let (opened, failed, dropped, stopped) =
            (opened.clone(), failed.clone(), dropped.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            let socket = socket::connect_from(&ws_base, transport, &token, timeout, source).await;
            match socket {
                Ok(socket) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    drop(slot);
                    // Reads (and so answers pings) without decoding anything.
                    if let Ended::Lost(_) = socket.run(stopped, "\u{1}", |_, _| {}).await {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    drop(slot);
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("  connection failed: {error:#}");
                    }
                }
            }
        }));
    }
    // Every attempt has a timeout, so this ends.
    let _ = slots.acquire_many(args.concurrency.max(1) as u32).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu();
    let open = opened.load(Ordering::Relaxed);
    let per_second = open as f64 / connect_secs;

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let rss_after = args.server_pid.and_then(rss_kib);

    let phase = Phase {
        duration: Duration::from_secs_f64(args.duration),
        count: None,
        rate: Some(args.rate),
        grace: Duration::from_secs(5),
    };
    let live = run_pairs(&api, target, &pairs, &phase).await?;
    let still_open = open - dropped.load(Ordering::Relaxed);

    let _ = stop.send(true);
    let closing = futures_util::future::join_all(tasks);
    let _ = tokio::time::timeout(Duration::from_secs(20), closing).await;

    let mut report = Report::new("connect");
    report
        .line(format!(
            "transport {}: {open} of {} sockets open ({} users, from {} source addresses) in {connect_secs:.2} s = {per_second:.0} connections/s, {} failed",
            target.transport.name(),
            args.sockets,
            users.len(),
            args.source_addresses,
            failed.load(Ordering::Relaxed)
        ))
        .line(format!("still open after the live phase: {still_open}"))
        .field("transport", target.transport.name())
        .field("sockets", args.sockets as u64)
        .field("users", users.len() as u64)
        .field("source_addresses", u64::from(args.source_addresses))
        .field("opened", open)
        .field("failed", failed.load(Ordering::Relaxed))
        .field("still_open", still_open)
        .field("connect_s", round(connect_secs))
        .field("connections_per_s", round(per_second));
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per_connection = after.saturating_sub(before) as f64 / open.max(1) as f64;
        report
            .line(format!(
                "server RSS {:.1} MiB -> {:.1} MiB = {per_connection:.1} KiB per connection",
                before as f64 / 1024.0,
                after as f64 / 1024.0
            ))
            .field("server_rss_before_kib", before)
            .field("server_rss_after_kib", after)
            .field("rss_per_connection_kib", round(per_connection));
    }
    let per_connect =
        |before: Option<f64>, after: Option<f64>| Some((after? - before?) * 1000.0 / open.max(1) as f64);
    if let Some(server) = per_connect(cpu_before.0, cpu_after.0) {
        report
            .line(format!("server CPU while connecting: {server:.3} ms per connection"))
            .field("server_cpu_ms_per_connection", round(server));
    }
    if let Some(own) = per_connect(cpu_before.1, cpu_after.1) {
        report
            .line(format!("load generator CPU while connecting: {own:.3} ms per connection"))
            .field("loadgen_cpu_ms_per_connection", round(own));
    }
    report.line(format!("live pairs: {} at {}/s while the idle sockets are open", pairs.len(), args.rate));
    live.add_to(&mut report);
    Ok(report)
}
