//! `group-fanout`: one group of N members, every member online with one socket, messages sent
//! into it at a fixed rate; per-delivery latency (send begun → frame read on each socket),
//! losses and duplicates.
//!
//! Sending is open loop: message k is sent at `k / rate` seconds whether or not earlier
//! sends were answered, so a slow server shows as latency instead of a lower rate. The
//! senders are a few members, who are online too: every message is expected on all N
//! sockets (a member's own devices get their own messages).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::groups::{listen, run_tag, setup_group};
use super::send::failure_kind;
use crate::api::{run_prefix, Api};
use crate::report::{load_average, round, rss_kib, Latency, Report};
use crate::Target;

/// The product's targets at 20 messages/s into 1,000 members.
const TARGET_P99_MS: f64 = 100.0;

#[derive(Args, Clone)]
pub struct GroupFanoutArgs {
    /// Members of the group, its creator included; each holds one socket.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Messages per second into the group.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Distinct members the messages are sent as (round-robin).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Seconds between the last socket opening and the first send.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Socket handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    pub connect_concurrency: usize,
    /// Members per request when building the group (create, then add).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// What the sends were answered, shared by the send tasks.
#[derive(Default)]
struct Answers {
    accepted_at: HashMap<u32, Instant>,
    failures: BTreeMap<String, u64>,
    http: Latency,
}

pub async fn run(target: &Target, args: GroupFanoutArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rate > 0.0, "--rate must be above 0");
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let group = setup_group(&api, target, args.members, args.batch, &run_prefix("gf")).await?;
    let senders = args.senders.clamp(1, group.members.len());

    let tag = run_tag();
    let opening = Instant::now();
    let listeners = listen(&api, target, &group.members, &tag, args.connect_concurrency).await?;
    let opened_in = opening.elapsed();
    let rss_online = args.server_pid.and_then(rss_kib);
    eprintln!("  {} sockets open in {:.1} s", listeners.sockets(), opened_in.as_secs_f64());
    // Each member coming online is announced to the others; let that settle.
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let load_before = load_average();
    let total = (args.rate * args.duration).round().max(1.0) as u32;
    let answers = Arc::new(Mutex::new(Answers::default()));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for number in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(f64::from(number) / args.rate)).await;
        let api = api.clone();
        let token = group.members[number as usize % senders].token.clone();
        let (conversation, answers) = (group.id.clone(), answers.clone());
        let text = format!("{tag}{number} fanout load test message");
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let result = api.send_to_conversation(&token, &conversation, &text).await;
            let elapsed = begun.elapsed();
            let mut answers = answers.lock().expect("never poisoned: no panics while held");
            match result.map(|(status, _)| status) {
                Ok(status) if status.is_success() => {
                    answers.http.record(elapsed);
                    answers.accepted_at.insert(number, begun);
                }
                other => *answers.failures.entry(failure_kind(other)).or_default() += 1,
            }
        }));
    }
    let sending_lasted = started.elapsed();
    for task in tasks {
        task.await?;
    }
    let answers = std::mem::take(&mut *answers.lock().expect("never poisoned: no panics while held"));
    let accepted = answers.accepted_at.len() as u64;
    let sockets = listeners.sockets() as u64;
    listeners.wait_for(accepted * sockets, Duration::from_secs_f64(args.grace)).await;
    let deliveries = listeners.finish(&answers.accepted_at).await?;

    let seconds = sending_lasted.as_secs_f64().max(1e-9);
    let p99 = deliveries.latency.ms(0.99);
    let met = p99 <= TARGET_P99_MS
        && deliveries.lost == 0
        && deliveries.duplicated == 0
        && accepted == u64::from(total);
    let mut report = Report::new("group-fanout");
    report
        .line(format!(
            "transport {}, group of {} members all online ({} sockets opened in {:.1} s), \
             {} messages/s for {:.1} s as {senders} members",
            target.transport.name(),
            group.members.len(),
            sockets,
            opened_in.as_secs_f64(),
            args.rate,
            seconds
        ))
        .line(format!(
            "sent {total}, accepted {accepted}, failed {} {:?}; expected deliveries {} = {:.0}/s",
            answers.failures.values().sum::<u64>(),
            answers.failures,
            accepted * sockets,
            (accepted * sockets) as f64 / seconds
        ))
        .line(format!("HTTP send latency      {}", answers.http.human()))
        .field("transport", target.transport.name())
        .field("members", group.members.len() as u64)
        .field("sockets", sockets)
        .field("connect_s", round(opened_in.as_secs_f64()))
        .field("rate", args.rate)
        .field("sending_s", round(seconds))
        .field("senders", senders as u64)
        .field("sent", u64::from(total))
        .field("accepted", accepted)
        .field("failed", answers.failures.values().sum::<u64>())
        .field("failures", json!(answers.failures))
        .field("http", answers.http.json())
        .field("expected_deliveries", accepted * sockets)
        .field("deliveries_per_s", round((accepted * sockets) as f64 / seconds));
    deliveries.add_to(&mut report);
    report
        .line(format!(
            "target p99 <= {TARGET_P99_MS} ms, 0 lost, 0 duplicated: {}",
            if met { "met" } else { "NOT met" }
        ))
        .field("target_met", met);
    report.machine_load(load_before);
    if let Some(rss) = rss_online {
        report
            .line(format!("server RSS with every member online {:.1} MiB", rss as f64 / 1024.0))
            .field("server_rss_kib", rss);
    }
    Ok(report)
}
