//! `outage`: K sockets on one instance that fans out through Redis, a steady rate of direct
//! messages to their users, and Redis stopped for a while in the middle: how long the
//! instance takes, once Redis is back, to bring every socket everything accepted meanwhile
//! (exactly once), and what that healing cost the store (the instance's `/metrics`).
//!
//! The sockets belong to `--users` users, `--devices` each (socket *i* is user *i* mod U's),
//! so every message is expected on each device of its receiver. Sending is open loop:
//! message k goes out at `k / rate` seconds, from sender k mod S to receiver k mod U,
//! whether or not earlier sends were answered, so an outage that slows the server shows as
//! latency, not as fewer messages. The message's text carries k.
//!
//! Redis is stopped and started by the shell commands `--redis-stop-cmd` and
//! `--redis-start-cmd` (e.g. `redis-cli -p 6390 shutdown nosave` and
//! `redis-server --port 6390 --save '' --daemonize yes`): the load generator only needs to be
//! told how, whatever runs Redis. Timeline: `--before` seconds of sending, the stop command,
//! `--outage` seconds, the start command, `--after` seconds of sending, then up to `--grace`
//! seconds for the last deliveries and for the healing backlog to drain.
//!
//! The heal time is from the moment the start command returned to the last first arrival,
//! on any socket, of a message whose send began before it: then every socket had every
//! message accepted until Redis came back. `/metrics` is read every 100 ms meanwhile for
//! when the instance saw the bus go down and come back, and how many sockets waited to heal.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

use super::send::failure_kind;
use crate::api::{run_prefix, Api, User};
use crate::report::{load_average, round, rss_kib, Latency, Report};
use crate::socket::{self, Ended};
use crate::Target;

#[derive(Args, Clone)]
pub struct OutageArgs {
    /// Sockets to open on the instance.
    #[arg(long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Sockets per user (so `sockets / devices` users receive the messages).
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Users the messages are sent as (round-robin).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Messages per second, over the whole run.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending before Redis is stopped.
    #[arg(long, default_value_t = 5.0)]
    pub before: f64,
    /// Seconds Redis stays stopped.
    #[arg(long, default_value_t = 30.0)]
    pub outage: f64,
    /// Seconds of sending after Redis was started again.
    #[arg(long, default_value_t = 5.0)]
    pub after: f64,
    /// Seconds to wait, after the last send, for the last deliveries and the healing backlog.
    #[arg(long, default_value_t = 120.0)]
    pub grace: f64,
    /// Base URL of the instance the messages are sent through (loopback only): another
    /// instance of the same deployment, so that every message reaches the sockets' instance
    /// through Redis. The instance of `--url` itself when absent (it then delivers to its own
    /// sockets while Redis is down, and only what it sends while it resubscribes is healed).
    #[arg(long)]
    pub send_url: Option<String>,
    /// Shell command (`sh -c`) that stops Redis.
    #[arg(long)]
    pub redis_stop_cmd: String,
    /// Shell command (`sh -c`) that starts Redis again; it should return once Redis answers.
    #[arg(long)]
    pub redis_start_cmd: String,
    /// Shell command (`sh -c`) that prints a number the store counts, e.g. the database's
    /// transactions (`psql -Atc "SELECT xact_commit + xact_rollback FROM pg_stat_database
    /// WHERE datname = '…'"`): read when the sending starts and when the healing is over.
    #[arg(long)]
    pub store_stat_cmd: Option<String>,
    /// Socket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Loopback source addresses the sockets are spread over (see `connect`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addresses: u8,
    /// Seconds between the last socket opening and the first send.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// The healing figures of the instance's `/metrics` this scenario reads.
const HEALING_METRICS: [&str; 5] = [
    "realtime_healed_connections_total",
    "realtime_healed_deliveries_total",
    "realtime_healing_store_reads_total",
    "realtime_stream_checks_total",
    "realtime_stream_check_healed_connections_total",
];

/// One send: when it began, and whether it was accepted.
struct SendRecord {
    begun: Instant,
    accepted: bool,
}

/// What one socket read: the first arrival of each message, and repeats.
#[derive(Default)]
struct Arrivals {
    first: HashMap<u64, Instant>,
    duplicated: u64,
}

/// The instance's state as `/metrics` showed it, polled during the run.
#[derive(Default)]
struct Watched {
    /// First poll that saw the bus down, and the first after it that saw it up.
    down_at: Option<Instant>,
    up_at: Option<Instant>,
    max_backlog: i64,
    /// The last poll that saw a backlog, once the bus was seen up again.
    backlog_until: Option<Instant>,
    backlog_now: i64,
    /// Catch-ups completed as last seen, and the first poll that saw the last change of
    /// that count after the bus came back: when the last socket had caught up.
    healed: f64,
    healed_until: Option<Instant>,
}

pub async fn run(target: &Target, args: OutageArgs) -> anyhow::Result<Report> {
    if args.sockets == 0 || args.devices == 0 || args.senders == 0 || args.rate <= 0.0 {
        bail!("--sockets, --devices, --senders and --rate must be positive");
    }
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let send_api = match &args.send_url {
        Some(url) => {
            crate::check_loopback(url)?;
            let api = Api::new(&Target { url: url.clone(), ..target.clone() })?;
            super::wait_ready(&api).await?;
            api
        }
        None => api.clone(),
    };
    let prefix = run_prefix("o");
    let user_count = args.sockets.div_ceil(args.devices);
    let users = api
        .register_many(&format!("{prefix}r"), user_count, &target.password, target.setup_concurrency)
        .await?;
    let senders = api
        .register_many(&format!("{prefix}s"), args.senders, &target.password, target.setup_concurrency)
        .await?;
    let tag = format!("{:08x}", rand::random::<u32>());

    // The sockets, each counting the first arrival of every message of this run.
    let (stop, stopped) = watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let timeout = Duration::from_secs_f64(target.timeout);
    let ws_base = api.ws_base();
    let marker = format!("{tag}:");
    let opening = Instant::now();
    let mut sockets = Vec::with_capacity(args.sockets);
    for i in 0..args.sockets {
        let slot = slots.clone().acquire_owned().await?;
        let token = users[i % user_count].token.clone();
        let (ws_base, transport, marker) = (ws_base.clone(), target.transport, marker.clone());
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.source_addresses)) as u8));
        let (arrived, failed, stopped) = (arrived.clone(), failed.clone(), stopped.clone());
        sockets.push(tokio::spawn(async move {
            let socket = socket::connect_from(&ws_base, transport, &token, timeout, source).await;
            drop(slot);
            let socket = match socket {
                Ok(socket) => socket,
                Err(error) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("  connection failed: {error:#}");
                    }
                    return (Arrivals::default(), Some(format!("{error:#}")));
                }
            };
            let mut arrivals = Arrivals::default();
            let ended = socket
                .run_raw(stopped, &marker, |text| {
                    let Some(k) = message_number(text, &marker) else { return };
                    let now = Instant::now();
                    if arrivals.first.insert(k, now).is_some() {
                        arrivals.duplicated += 1;
                    } else {
                        arrived.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .await;
            let lost = match ended {
                Ended::Lost(why) => Some(why),
                Ended::Stopped => None,
            };
            (arrivals, lost)
        }));
    }
    let _ = slots.acquire_many(args.concurrency.max(1) as u32).await?;
    let connect_secs = opening.elapsed().as_secs_f64();
    let failed_sockets = failed.load(Ordering::Relaxed);
    eprintln!("  {} sockets open in {connect_secs:.1} s", args.sockets as u64 - failed_sockets);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let metrics_before = scrape(&api).await?;
    if metrics_before.get("realtime_bus_up") != Some(&1.0) {
        bail!("the instance does not report its fan-out bus up before the outage (realtime_bus_up)");
    }
    let load_before = load_average();
    let store_before = match &args.store_stat_cmd {
        Some(command) => Some(store_stat(command).await.context("--store-stat-cmd")?),
        None => None,
    };

    // The watcher: `/metrics` every 100 ms until told to stop.
    let watched = Arc::new(Mutex::new(Watched::default()));
    let (stop_watch, watch_stopped) = watch::channel(false);
    let watcher = tokio::spawn(watch_metrics(api.clone(), watched.clone(), watch_stopped));

    // The senders: message k at k / rate seconds, open loop.
    let total = Duration::from_secs_f64(args.before + args.outage + args.after);
    let count = (total.as_secs_f64() * args.rate).floor() as u64;
    let records: Arc<Mutex<HashMap<u64, SendRecord>>> = Arc::default();
    let failures: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let http = Arc::new(Mutex::new(Latency::default()));
    let started = tokio::time::Instant::now();
    let sending = {
        let (api, senders, users, tag) = (send_api.clone(), senders.clone(), users.clone(), tag.clone());
        let (records, failures, http) = (records.clone(), failures.clone(), http.clone());
        let rate = args.rate;
        tokio::spawn(async move {
            let mut inflight = Vec::with_capacity(count as usize);
            for k in 0..count {
                tokio::time::sleep_until(started + Duration::from_secs_f64(k as f64 / rate)).await;
                let sender: &User = &senders[k as usize % senders.len()];
                let receiver: &User = &users[k as usize % users.len()];
                let (api, token, to) = (api.clone(), sender.token.clone(), receiver.id.clone());
                let text = format!("{tag}:{k}: outage test message");
                let (records, failures, http) = (records.clone(), failures.clone(), http.clone());
                inflight.push(tokio::spawn(async move {
                    let begun = Instant::now();
                    let result = api.send(&token, &to, &text).await.map(|(status, _)| status);
                    let accepted = matches!(result, Ok(status) if status.is_success());
                    if accepted {
                        lock(&http).record(begun.elapsed());
                    } else {
                        *lock(&failures).entry(failure_kind(result)).or_default() += 1;
                    }
                    lock(&records).insert(k, SendRecord { begun, accepted });
                }));
            }
            for send in inflight {
                let _ = send.await;
            }
        })
    };

    // The outage.
    tokio::time::sleep_until(started + Duration::from_secs_f64(args.before)).await;
    let stopping = Instant::now();
    shell(&args.redis_stop_cmd).await.context("--redis-stop-cmd")?;
    let stopped_at = Instant::now();
    eprintln!("  Redis stopped ({:.0} ms)", (stopped_at - stopping).as_secs_f64() * 1e3);
    tokio::time::sleep_until(
        tokio::time::Instant::from_std(stopped_at) + Duration::from_secs_f64(args.outage),
    )
    .await;
    let starting = Instant::now();
    shell(&args.redis_start_cmd).await.context("--redis-start-cmd")?;
    let back_at = Instant::now();
    eprintln!("  Redis started again ({:.0} ms)", (back_at - starting).as_secs_f64() * 1e3);

    sending.await?;
    let sent_by = Instant::now();
    let records = std::mem::take(&mut *lock(&records));
    let accepted = records.values().filter(|r| r.accepted).count() as u64;
    let expected = accepted * args.devices as u64;
    let deadline = sent_by + Duration::from_secs_f64(args.grace);
    while Instant::now() < deadline {
        // The bus seen back (when it was seen down), and nobody waiting to catch up.
        let drained = {
            let watched = lock(&watched);
            watched.backlog_now == 0 && (watched.down_at.is_none() || watched.up_at.is_some())
        };
        if arrived.load(Ordering::Relaxed) >= expected && drained {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited_until = Instant::now();
    let metrics_after = scrape(&api).await?;
    let store_after = match &args.store_stat_cmd {
        Some(command) => Some(store_stat(command).await.context("--store-stat-cmd")?),
        None => None,
    };
    let _ = stop_watch.send(true);
    let _ = watcher.await;
    let watched = std::mem::take(&mut *lock(&watched));
    let rss = args.server_pid.and_then(rss_kib);

    let _ = stop.send(true);
    let mut per_socket = Vec::with_capacity(sockets.len());
    for task in sockets {
        per_socket.push(task.await?);
    }

    // Every accepted message on every device of its receiver, once.
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    let mut unexpected = 0u64;
    let mut sockets_lost = 0u64;
    let mut heal_until: Option<Instant> = None;
    // The instance subscribed again when its metrics first showed the bus up.
    let resubscribed = watched.up_at.unwrap_or(back_at).max(back_at);
    let (mut before_outage, mut during, mut gap, mut after_outage) =
        (Latency::default(), Latency::default(), Latency::default(), Latency::default());
    let mut outage_accepted = 0u64;
    let mut outage_arrived_early = 0u64;
    for record in records.values() {
        if record.accepted && record.begun >= stopped_at && record.begun < back_at {
            outage_accepted += 1;
        }
    }
    for (i, (arrivals, ended)) in per_socket.iter().enumerate() {
        if ended.is_some() {
            sockets_lost += 1;
            if sockets_lost <= 3 {
                eprintln!("  a socket ended early: {}", ended.as_deref().unwrap_or_default());
            }
        }
        duplicated += arrivals.duplicated;
        let user = (i % user_count) as u64;
        for &k in arrivals.first.keys() {
            if k % user_count as u64 != user || !records.get(&k).is_some_and(|r| r.accepted) {
                unexpected += 1;
            }
        }
        for k in (user..count).step_by(user_count) {
            let Some(record) = records.get(&k).filter(|r| r.accepted) else { continue };
            let Some(&at) = arrivals.first.get(&k) else {
                lost += 1;
                continue;
            };
            if record.begun < resubscribed {
                heal_until = Some(heal_until.map_or(at, |until| until.max(at)));
            }
            let latency = at.saturating_duration_since(record.begun);
            if record.begun < stopped_at {
                before_outage.record(latency);
            } else if record.begun < back_at {
                during.record(at.saturating_duration_since(back_at));
                if at < back_at {
                    outage_arrived_early += 1;
                }
            } else if record.begun < resubscribed {
                gap.record(latency);
            } else {
                after_outage.record(latency);
            }
        }
    }
    let heal_secs = heal_until.map_or(0.0, |until| until.saturating_duration_since(back_at).as_secs_f64());
    let since = |at: Option<Instant>, from: Instant| {
        at.map(|at| round(at.saturating_duration_since(from).as_secs_f64()))
    };
    let bus_down_s = since(watched.down_at, stopped_at);
    let bus_up_s = since(watched.up_at, back_at);
    let backlog_s = since(watched.backlog_until, back_at);
    let last_catch_up_s = since(watched.healed_until, back_at);
    let deltas: serde_json::Map<String, Value> = HEALING_METRICS
        .iter()
        .map(|name| {
            let delta = metrics_after.get(*name).copied().unwrap_or(0.0)
                - metrics_before.get(*name).copied().unwrap_or(0.0);
            ((*name).to_owned(), json!(delta as u64))
        })
        .collect();
    let delta = |name: &str| deltas.get(name).and_then(Value::as_u64).unwrap_or(0);
    let failures = std::mem::take(&mut *lock(&failures));
    let failed_sends: u64 = failures.values().sum();
    let http = std::mem::take(&mut *lock(&http));

    let mut report = Report::new("outage");
    report
        .line(format!(
            "transport {}: {} of {} sockets open ({} users x {} devices, {} source addresses) in {connect_secs:.1} s",
            target.transport.name(),
            args.sockets as u64 - failed_sockets,
            args.sockets,
            user_count,
            args.devices,
            args.source_addresses
        ))
        .line(format!(
            "{count} messages at {}/s from {} senders through {}: {accepted} accepted, {failed_sends} failed {failures:?}; {outage_accepted} accepted during the {} s outage",
            args.rate,
            args.senders,
            if args.send_url.is_some() { "another instance" } else { "the sockets' instance" },
            args.outage
        ))
        .line(format!("HTTP send latency      {}", http.human()))
        .line(format!(
            "Redis stopped: the instance showed the bus down after {}; started: up after {} (realtime_bus_up, polled every 100 ms)",
            seconds_text(bus_down_s),
            seconds_text(bus_up_s)
        ))
        .line(format!(
            "heal time: {heal_secs:.2} s from Redis back until every socket had every message sent before the instance was subscribed again; healing backlog empty after {} (at most {} sockets waiting)",
            seconds_text(backlog_s),
            watched.max_backlog
        ))
        .line(format!(
            "the last catch-up completed {} after Redis was back (realtime_healed_connections_total last moved)",
            seconds_text(last_catch_up_s)
        ))
        .line(format!(
            "deliveries of outage messages after Redis was back {}; {outage_arrived_early} arrived before it",
            during.human()
        ))
        .line(format!("delivery latency before the outage     {}", before_outage.human()))
        .line(format!("delivery latency, sent between Redis back and the bus up  {}", gap.human()))
        .line(format!("delivery latency after the bus was up again               {}", after_outage.human()))
        .line(format!(
            "expected {expected} deliveries: lost {lost}, duplicated {duplicated}, unexpected {unexpected}, sockets lost {sockets_lost} (waited {:.1} s after the last send)",
            (waited_until - sent_by).as_secs_f64()
        ))
        .line(format!(
            "healing: {} connections healed, {} deliveries, {} store queries ({} stream checks, {} connections healed by them)",
            delta(HEALING_METRICS[0]),
            delta(HEALING_METRICS[1]),
            delta(HEALING_METRICS[2]),
            delta(HEALING_METRICS[3]),
            delta(HEALING_METRICS[4])
        ))
        .field("transport", target.transport.name())
        .field("sockets", args.sockets as u64)
        .field("users", user_count as u64)
        .field("devices", args.devices as u64)
        .field("source_addresses", u64::from(args.source_addresses))
        .field("failed_sockets", failed_sockets)
        .field("connect_s", round(connect_secs))
        .field("rate", args.rate)
        .field("sent_through_another_instance", args.send_url.is_some())
        .field("outage_s", args.outage)
        .field("sent", count)
        .field("accepted", accepted)
        .field("failed", failed_sends)
        .field("failures", json!(failures))
        .field("outage_accepted", outage_accepted)
        .field("http", http.json())
        .field("bus_down_seen_s", bus_down_s)
        .field("bus_up_seen_s", bus_up_s)
        .field("heal_s", round(heal_secs))
        .field("backlog_empty_s", backlog_s)
        .field("max_backlog", watched.max_backlog)
        .field("last_catch_up_s", last_catch_up_s)
        .field("outage_delivery_after_back", during.json())
        .field("outage_arrived_before_back", outage_arrived_early)
        .field("delivery_before", before_outage.json())
        .field("delivery_reconnecting", gap.json())
        .field("delivery_after", after_outage.json())
        .field("expected", expected)
        .field("lost", lost)
        .field("duplicated", duplicated)
        .field("unexpected", unexpected)
        .field("sockets_lost", sockets_lost)
        .field("healing", Value::Object(deltas));
    if let (Some(before), Some(after)) = (store_before, store_after) {
        report
            .line(format!(
                "--store-stat-cmd went from {before} to {after} (+{}) from the first send to the end of the healing",
                after.saturating_sub(before)
            ))
            .field("store_stat_delta", after.saturating_sub(before));
    }
    if let Some(rss) = rss {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    report.machine_load(load_before);
    Ok(report)
}

/// The k of a frame of this run: the text carries `{tag}:{k}:`.
fn message_number(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)? + marker.len();
    let rest = &text[at..];
    rest[..rest.find(':')?].parse().ok()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().expect("never poisoned: no panics while held")
}

fn seconds_text(seconds: Option<f64>) -> String {
    seconds.map_or("(not seen)".into(), |s| format!("{s:.2} s"))
}

/// The number `command` prints.
async fn store_stat(command: &str) -> anyhow::Result<u64> {
    let output = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {command:?}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("{command:?} exited with {}", output.status);
    }
    text.trim().parse().with_context(|| format!("{command:?} printed {text:?}, not a number"))
}

async fn shell(command: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} exited with {status}");
    }
    Ok(())
}

/// The instance's `/metrics`, as name → value for the series without labels.
async fn scrape(api: &Api) -> anyhow::Result<HashMap<String, f64>> {
    let text = api.metrics().await?;
    Ok(parse_metrics(&text))
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.contains('{'))
        .filter_map(|line| {
            let (name, value) = line.split_once(' ')?;
            Some((name.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}

async fn watch_metrics(api: Api, watched: Arc<Mutex<Watched>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(metrics) = scrape(&api).await else { continue };
        let now = Instant::now();
        let up = metrics.get("realtime_bus_up").copied().unwrap_or(1.0) >= 1.0;
        let backlog = metrics.get("realtime_healing_backlog").copied().unwrap_or(0.0) as i64;
        let healed = metrics.get("realtime_healed_connections_total").copied().unwrap_or(0.0);
        let mut state = lock(&watched);
        if healed != state.healed && state.up_at.is_some() {
            state.healed_until = Some(now);
        }
        state.healed = healed;
        if !up && state.down_at.is_none() {
            state.down_at = Some(now);
        }
        if up && state.down_at.is_some() && state.up_at.is_none() {
            state.up_at = Some(now);
        }
        state.max_backlog = state.max_backlog.max(backlog);
        state.backlog_now = backlog;
        if backlog > 0 && state.up_at.is_some() {
            state.backlog_until = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_names_its_message_by_the_number_after_the_runs_tag() {
        let frame = r#"{"event":"newMessage","data":{"message":"0badcafe:1234: outage test message"}}"#;
        assert_eq!(message_number(frame, "0badcafe:"), Some(1234));
        assert_eq!(message_number(frame, "deadbeef:"), None);
    }

    #[test]
    fn metrics_without_labels_are_read_by_name() {
        let text = "# HELP realtime_bus_up x\n# TYPE realtime_bus_up gauge\nrealtime_bus_up 1\n\
                    http_requests_total{method=\"GET\"} 3\nrealtime_healing_store_reads_total 42\n";
        let metrics = parse_metrics(text);
        assert_eq!(metrics.get("realtime_bus_up"), Some(&1.0));
        assert_eq!(metrics.get("realtime_healing_store_reads_total"), Some(&42.0));
        assert_eq!(metrics.len(), 2);
    }
}
