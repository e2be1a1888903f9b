//! `send`: N sender/receiver pairs. Each sender posts messages to its receiver one at a time
//! (optionally paced to a target rate); each receiver listens on a socket. Every message
//! carries a nonce `<run>:<pair>:<seq>` in its text, so a delivery is matched to its send
//! whether the event arrives before or after the HTTP response.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::stream::{self, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::{run_prefix, Api, User};
use crate::report::{round, rss_kib, Latency, Report};
use crate::socket::{self, Ended};
use crate::Target;

#[derive(Args, Clone)]
pub struct SendArgs {
    /// Sender/receiver pairs, i.e. concurrent senders.
    #[arg(long, default_value_t = 64)]
    pub pairs: usize,
    /// Seconds of sending (ignored when --count is given).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total messages to send instead of a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Target rate in sends/s over all pairs; as fast as possible when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub struct Pair {
    pub sender: User,
    pub receiver: User,
}

/// How long and how fast one sending phase runs.
#[derive(Clone, Copy)]
pub struct Phase {
    pub duration: Duration,
    pub count: Option<u64>,
    pub rate: Option<f64>,
    pub grace: Duration,
}

pub async fn run(target: &Target, args: SendArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let pairs = setup_pairs(&api, target, args.pairs.max(1), &run_prefix("s")).await?;
    let phase = Phase {
        duration: Duration::from_secs_f64(args.duration),
        count: args.count,
        rate: args.rate,
        grace: Duration::from_secs_f64(args.grace),
    };
    let outcome = run_pairs(&api, target, &pairs, &phase).await?;
    let mut report = Report::new("send");
    report
        .line(format!(
            "transport {}, {} pairs, target rate {}",
            target.transport.name(),
            pairs.len(),
            rate_text(args.rate)
        ))
        .field("transport", target.transport.name())
        .field("pairs", pairs.len() as u64)
        .field("target_rate", args.rate.map(Value::from).unwrap_or(Value::Null));
    outcome.add_to(&mut report);
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map(|r| format!("{r}/s")).unwrap_or_else(|| "unpaced".into())
}

/// Registers 2×`n` users and pairs them up (setup, not timed).
pub async fn setup_pairs(api: &Api, target: &Target, n: usize, prefix: &str) -> anyhow::Result<Vec<Pair>> {
    let users = api.register_many(prefix, 2 * n, &target.password, target.setup_concurrency).await?;
    let mut users = users.into_iter();
    let mut pairs = Vec::with_capacity(n);
    while let (Some(sender), Some(receiver)) = (users.next(), users.next()) {
        pairs.push(Pair { sender, receiver });
    }
    Ok(pairs)
}

/// What one phase measured.
pub struct Outcome {
    pub elapsed: Duration,
    pub accepted: u64,
    pub failures: BTreeMap<String, u64>,
    pub http: Latency,
    pub delivery: Latency,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Deliveries of a message whose send was not answered 2xx (e.g. timed out).
    pub unexpected: u64,
    pub sockets_lost: u64,
}

impl Outcome {
    pub fn sends_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn add_to(&self, report: &mut Report) {
        let failed: u64 = self.failures.values().sum();
        report
            .line(format!(
                "accepted {} sends in {:.2} s = {:.0} sends/s, failed {} {:?}",
                self.accepted,
                self.elapsed.as_secs_f64(),
                self.sends_per_second(),
                failed,
                self.failures
            ))
            .line(format!("HTTP send latency      {}", self.http.human()))
            .line(format!("delivery latency       {}", self.delivery.human()))
            .line(format!(
                "delivered {}, lost {}, duplicated {}, out of order {}, unexpected {}, sockets lost {}",
                self.delivered,
                self.lost,
                self.duplicated,
                self.out_of_order,
                self.unexpected,
                self.sockets_lost
            ))
            .field("elapsed_s", round(self.elapsed.as_secs_f64()))
            .field("accepted", self.accepted)
            .field("sends_per_s", round(self.sends_per_second()))
            .field("failed", failed)
            .field("failures", json!(self.failures))
            .field("http", self.http.json())
            .field("delivery", self.delivery.json())
            .field("delivered", self.delivered)
            .field("lost", self.lost)
            .field("duplicated", self.duplicated)
            .field("out_of_order", self.out_of_order)
            .field("unexpected", self.unexpected)
            .field("sockets_lost", self.sockets_lost);
    }
}

/// Send times of one pair's messages not yet delivered, by sequence number.
type SentAt = Arc<Mutex<HashMap<u64, Instant>>>;

#[derive(Default)]
struct Received {
    seen: HashSet<u64>,
    max_seq: u64,
    delivery: Latency,
    duplicated: u64,
    out_of_order: u64,
}

/// Connects every receiver, runs the senders for the phase, waits for the deliveries.
pub async fn run_pairs(api: &Api, target: &Target, pairs: &[Pair], phase: &Phase) -> anyhow::Result<Outcome> {
    let run_tag = format!("{:08x}", rand::random::<u32>());
    let timeout = Duration::from_secs_f64(target.timeout);
    let ws_base = api.ws_base();
    let sockets = stream::iter(pairs.iter())
        .map(|pair| socket::connect(&ws_base, target.transport, &pair.receiver.token, timeout))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Each receiver coming online is announced to every open socket; let that settle so the
    // phase measures sending, not the announcements (which `connect` reports on its own).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (stop, stopped) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let sent_at: Vec<SentAt> = pairs.iter().map(|_| SentAt::default()).collect();

    let mut receivers = Vec::new();
    for (index, socket) in sockets.into_iter().enumerate() {
        let sent_at = sent_at[index].clone();
        let delivered = delivered.clone();
        let stopped = stopped.clone();
        let prefix = format!("{run_tag}:{index}:");
        receivers.push(tokio::spawn(async move {
            let mut rx = Received::default();
            let ended = socket
                .run(stopped, &prefix, |name, data| {
                    if name != "newMessage" {
                        return;
                    }
                    let Some(seq) = data
                        .get("message")
                        .and_then(Value::as_str)
                        .and_then(|text| text.strip_prefix(&prefix))
                        .and_then(|rest| rest.split(' ').next())
                        .and_then(|seq| seq.parse::<u64>().ok())
                    else {
                        return;
                    };
                    let now = Instant::now();
                    if !rx.seen.insert(seq) {
                        rx.duplicated += 1;
                        return;
                    }
                    if seq < rx.max_seq {
                        rx.out_of_order += 1;
                    }
                    rx.max_seq = rx.max_seq.max(seq);
                    if let Some(at) =
                        sent_at.lock().expect("never poisoned: no panics while held").remove(&seq)
                    {
                        rx.delivery.record(now - at);
                    }
                    delivered.fetch_add(1, Ordering::Relaxed);
                })
                .await;
            (rx, ended)
        }));
    }

    let started = Instant::now();
    let mut senders = Vec::new();
    for (index, pair) in pairs.iter().enumerate() {
        let api = api.clone();
        let token = pair.sender.token.clone();
        let to = pair.receiver.id.clone();
        let sent_at = sent_at[index].clone();
        let prefix = format!("{run_tag}:{index}:");
        let pace = Pace::new(phase, index, pairs.len(), started);
        senders.push(tokio::spawn(drive(pace, move |seq| {
            let (api, token, to, sent_at) = (api.clone(), token.clone(), to.clone(), sent_at.clone());
            let text = format!("{prefix}{seq} load test message");
            async move {
                sent_at.lock().expect("never poisoned: no panics while held").insert(seq, Instant::now());
                let result = api.send(&token, &to, &text).await.map(|(status, _)| status);
                if !matches!(result, Ok(status) if status.is_success()) {
                    sent_at.lock().expect("never poisoned: no panics while held").remove(&seq);
                }
                result
            }
        })));
    }

    let mut sent = Vec::new();
    for sender in senders {
        sent.push(sender.await?);
    }
    let elapsed = started.elapsed();
    let accepted_total: u64 = sent.iter().map(|s| s.accepted.len() as u64).sum();
    let grace_end = Instant::now() + phase.grace;
    while delivered.load(Ordering::Relaxed) < accepted_total && Instant::now() < grace_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);

    let mut outcome = Outcome {
        elapsed,
        accepted: accepted_total,
        failures: BTreeMap::new(),
        http: Latency::default(),
        delivery: Latency::default(),
        delivered: 0,
        lost: 0,
        duplicated: 0,
        out_of_order: 0,
        unexpected: 0,
        sockets_lost: 0,
    };
    for (receiver, sent) in receivers.into_iter().zip(sent) {
        let (rx, ended) = receiver.await?;
        if let Ended::Lost(why) = ended {
            eprintln!("  a receiver's socket ended early: {why}");
            outcome.sockets_lost += 1;
        }
        let accepted: HashSet<u64> = sent.accepted.iter().copied().collect();
        outcome.lost += accepted.iter().filter(|seq| !rx.seen.contains(seq)).count() as u64;
        outcome.unexpected += rx.seen.iter().filter(|seq| !accepted.contains(seq)).count() as u64;
        outcome.delivered += rx.seen.len() as u64;
        outcome.duplicated += rx.duplicated;
        outcome.out_of_order += rx.out_of_order;
        outcome.delivery.merge(&rx.delivery);
        outcome.http.merge(&sent.http);
        for (key, count) in sent.failures {
            *outcome.failures.entry(key).or_default() += count;
        }
    }
    Ok(outcome)
}

/// When one of `n` sending tasks sends: closed loop (the next send when the last one is
/// answered), or paced to its share of the phase's rate; until the deadline or its quota.
#[derive(Clone, Copy)]
pub struct Pace {
    index: usize,
    n: usize,
    started: Instant,
    deadline: Instant,
    interval: Option<Duration>,
    quota: Option<u64>,
}

impl Pace {
    pub fn new(phase: &Phase, index: usize, n: usize, started: Instant) -> Self {
        let n = n.max(1);
        let interval = phase.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(n as f64 / r));
        let quota = phase.count.map(|c| c / n as u64 + u64::from((index as u64) < c % n as u64));
        Self { index, n, started, deadline: started + phase.duration, interval, quota }
    }
}

/// What one sending task did.
pub struct Sent {
    /// Sequence numbers (1, 2, …) of the sends answered 2xx.
    pub accepted: Vec<u64>,
    pub failures: BTreeMap<String, u64>,
    pub http: Latency,
}

impl Sent {
    /// Adds up the tasks' answers: accepted count, failures by kind, HTTP latency.
    pub fn total(sent: &[Sent]) -> (u64, BTreeMap<String, u64>, Latency) {
        let mut failures = BTreeMap::new();
        let mut http = Latency::default();
        for one in sent {
            http.merge(&one.http);
            for (key, count) in &one.failures {
                *failures.entry(key.clone()).or_default() += count;
            }
        }
        (sent.iter().map(|s| s.accepted.len() as u64).sum(), failures, http)
    }
}

/// Runs one sending task: calls `send(seq)` for seq = 1, 2, … as `pace` says, timing each
/// answer; a refused send is counted by kind and followed by a short back-off.
pub async fn drive<F, Fut>(pace: Pace, mut send: F) -> Sent
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<reqwest::StatusCode>>,
{
    let mut out = Sent { accepted: Vec::new(), failures: BTreeMap::new(), http: Latency::default() };
    let mut ticker = pace.interval.map(|every| {
        // Spread the tasks over one interval so that paced sends don't come in bursts.
        let first =
            tokio::time::Instant::from_std(pace.started) + every.mul_f64(pace.index as f64 / pace.n as f64);
        let mut ticker = tokio::time::interval_at(first, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker
    });
    let mut seq = 0u64;
    loop {
        match pace.quota {
            Some(quota) if seq >= quota => break,
            None if Instant::now() >= pace.deadline => break,
            _ => {}
        }
        if let Some(ticker) = ticker.as_mut() {
            ticker.tick().await;
            if pace.quota.is_none() && Instant::now() >= pace.deadline {
                break;
            }
        }
        seq += 1;
        let begun = Instant::now();
        let result = send(seq).await;
        let elapsed = begun.elapsed();
        match result {
            Ok(status) if status.is_success() => {
                out.http.record(elapsed);
                out.accepted.push(seq);
            }
            other => {
                *out.failures.entry(failure_kind(other)).or_default() += 1;
                // A refused send is not retried at once: back off a little.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out
}

/// How a send failed, as counted in the report: `http_<status>`, `timeout` or `transport_error`.
pub fn failure_kind(result: anyhow::Result<reqwest::StatusCode>) -> String {
    match result {
        Ok(status) => format!("http_{}", status.as_u16()),
        Err(error) if error.to_string().contains("timed out") => "timeout".into(),
        Err(_) => "transport_error".into(),
    }
}
