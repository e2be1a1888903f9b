//! `group-send`: in one run, the closed-loop 1:1 send rate (the `send` scenario's pairs) and
//! the rate of sends into one group of N members at the same concurrency, and their ratio.
//!
//! The 1:1 phase runs first, exactly as `send` (receivers online, deliveries checked). Then
//! as many tasks as there were pairs send into the group, each as one of a few members
//! (`--senders`), each task sending its next message when the last one is answered. By
//! default no member is online during the group phase, so it measures the store and the
//! group's fan-out bookkeeping, not the frames; `--online K` connects K members that are
//! not senders and checks they get every message once, in `seq` order
//! (`group-fanout` measures delivery to a whole group).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::groups::{listen, run_tag, setup_group};
use super::send::{drive, run_pairs, setup_pairs, Outcome, Pace, Phase, Sent};
use crate::api::{run_prefix, Api};
use crate::report::{round, rss_kib, Latency, Report};
use crate::Target;

/// The product's target: a group send at least this share of a 1:1 send's rate.
const TARGET_RATIO_PERCENT: f64 = 80.0;

#[derive(Args, Clone)]
pub struct GroupSendArgs {
    /// Members of the group, its creator included.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Concurrent senders in both phases: 1:1 pairs, and tasks sending into the group.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Distinct members the group's sending tasks send as (round-robin).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Members (not senders) connected to the real-time endpoint during the group phase.
    #[arg(long, default_value_t = 0)]
    pub online: usize,
    /// Seconds of sending in each phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding deliveries after each phase's last send.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Members per request when building the group (create, then add).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub async fn run(target: &Target, args: GroupSendArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let prefix = run_prefix("gs");
    let concurrency = args.concurrency.max(1);
    let senders = args.senders.clamp(1, args.members.max(2));
    anyhow::ensure!(
        senders + args.online <= args.members,
        "--senders {senders} + --online {} exceed the group's {} members",
        args.online,
        args.members
    );
    let pairs = setup_pairs(&api, target, concurrency, &format!("{prefix}p")).await?;
    let group = setup_group(&api, target, args.members, args.batch, &format!("{prefix}g")).await?;
    let phase = Phase {
        duration: Duration::from_secs_f64(args.duration),
        count: None,
        rate: None,
        grace: Duration::from_secs_f64(args.grace),
    };

    eprintln!("  1:1 phase: {concurrency} pairs");
    let direct = run_pairs(&api, target, &pairs, &phase).await?;

    eprintln!("  group phase: {concurrency} tasks as {senders} members");
    let tag = run_tag();
    let listeners = if args.online > 0 {
        let online = &group.members[senders..senders + args.online];
        let listeners = listen(&api, target, online, &tag, 32).await?;
        // Each member coming online is announced to the others; let that settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(listeners)
    } else {
        None
    };
    let accepted_at: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let numbers = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..concurrency {
        let api = api.clone();
        let token = group.members[index % senders].token.clone();
        let (conversation, tag) = (group.id.clone(), tag.clone());
        let (accepted_at, numbers) = (accepted_at.clone(), numbers.clone());
        let pace = Pace::new(&phase, index, concurrency, started);
        tasks.push(tokio::spawn(drive(pace, move |_| {
            let (api, token, conversation) = (api.clone(), token.clone(), conversation.clone());
            let accepted_at = accepted_at.clone();
            let number = numbers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let text = format!("{tag}{number} group load test message");
            async move {
                let begun = Instant::now();
                let result = api.send_to_conversation(&token, &conversation, &text).await;
                let status = result.map(|(status, _)| status)?;
                if status.is_success() {
                    accepted_at.lock().expect("never poisoned: no panics while held").insert(number, begun);
                }
                Ok(status)
            }
        })));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await?);
    }
    let group_elapsed = started.elapsed();
    let (group_accepted, group_failures, group_http) = Sent::total(&sent);
    let deliveries = match listeners {
        Some(listeners) => {
            listeners.wait_for(group_accepted * listeners.sockets() as u64, phase.grace).await;
            let accepted = std::mem::take(&mut *accepted_at.lock().expect("never poisoned"));
            Some(listeners.finish(&accepted).await?)
        }
        None => None,
    };

    let group_rate = group_accepted as f64 / group_elapsed.as_secs_f64().max(1e-9);
    let direct_rate = direct.sends_per_second();
    let ratio = 100.0 * group_rate / direct_rate.max(1e-9);
    let mut report = Report::new("group-send");
    report
        .line(format!(
            "transport {}, {concurrency} concurrent senders in both phases; group of {} members, \
             {senders} sending members, {} online",
            target.transport.name(),
            args.members,
            args.online
        ))
        .line(format!(
            "1:1:   {:.0} sends/s ({} in {:.2} s), failed {} {:?}; lost {}, duplicated {}",
            direct_rate,
            direct.accepted,
            direct.elapsed.as_secs_f64(),
            direct.failures.values().sum::<u64>(),
            direct.failures,
            direct.lost,
            direct.duplicated
        ))
        .line(format!("       HTTP send latency {}", direct.http.human()))
        .line(format!(
            "group: {:.0} sends/s ({} in {:.2} s), failed {} {:?}",
            group_rate,
            group_accepted,
            group_elapsed.as_secs_f64(),
            group_failures.values().sum::<u64>(),
            group_failures
        ))
        .line(format!("       HTTP send latency {}", group_http.human()))
        .line(format!(
            "group / 1:1 = {ratio:.1} % (target >= {TARGET_RATIO_PERCENT} %: {})",
            if ratio >= TARGET_RATIO_PERCENT { "met" } else { "NOT met" }
        ))
        .field("transport", target.transport.name())
        .field("concurrency", concurrency as u64)
        .field("members", args.members as u64)
        .field("senders", senders as u64)
        .field("online", args.online as u64)
        .field("direct", direct_json(&direct))
        .field("group", phase_json(group_elapsed, group_accepted, &group_failures, &group_http))
        .field("direct_sends_per_s", round(direct_rate))
        .field("group_sends_per_s", round(group_rate))
        .field("ratio_percent", round(ratio))
        .field("target_met", ratio >= TARGET_RATIO_PERCENT);
    if let Some(deliveries) = deliveries {
        deliveries.add_to(&mut report);
    }
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}

fn phase_json(
    elapsed: Duration,
    accepted: u64,
    failures: &std::collections::BTreeMap<String, u64>,
    http: &Latency,
) -> Value {
    json!({
        "elapsed_s": round(elapsed.as_secs_f64()),
        "accepted": accepted,
        "sends_per_s": round(accepted as f64 / elapsed.as_secs_f64().max(1e-9)),
        "failed": failures.values().sum::<u64>(),
        "failures": failures,
        "http": http.json(),
    })
}

fn direct_json(direct: &Outcome) -> Value {
    let mut value = phase_json(direct.elapsed, direct.accepted, &direct.failures, &direct.http);
    if let Some(object) = value.as_object_mut() {
        object.insert("delivery".into(), direct.delivery.json());
        object.insert("lost".into(), direct.lost.into());
        object.insert("duplicated".into(), direct.duplicated.into());
        object.insert("out_of_order".into(), direct.out_of_order.into());
    }
    value
}
