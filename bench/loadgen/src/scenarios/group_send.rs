//! `group-send`: in one run, the closed-loop 1:1 send rate (the `send` scenario's pairs) and
//! the rate of sends into one group of N members at the same concurrency, and their ratio.
//!
//! Each round runs a 1:1 phase, exactly as `send` (receivers online, deliveries checked),
//! then a group phase: as many tasks as there were pairs send into the group, each as one of
//! a few members (`--senders`), each sending its next message when the last one is answered.
//! With several rounds (`--rounds`) the phases alternate on the same users and group, so a
//! machine whose speed drifts affects both alike; the figures are the medians of the rounds.
//!
//! By default no member is online during the group phase, so it measures the store and the
//! group's fan-out bookkeeping, not the frames; `--online K` connects K members that are
//! not senders and checks they get every message once, in `seq` order (`group-fanout`
//! measures delivery to a whole group).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::groups::{listen, run_tag, setup_group, Deliveries, Group};
use super::send::{drive, run_pairs, setup_pairs, Outcome, Pace, Phase, Sent};
use crate::api::{run_prefix, Api};
use crate::report::{load_average, round, rss_kib, Latency, Report};
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
    /// Rounds of a 1:1 phase followed by a group phase.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
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

/// What one group phase measured.
struct GroupPhase {
    elapsed: Duration,
    accepted: u64,
    failures: BTreeMap<String, u64>,
    http: Latency,
    deliveries: Option<Deliveries>,
}

impl GroupPhase {
    fn sends_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
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

    let load_before = load_average();
    let mut rounds = Vec::new();
    for index in 1..=args.rounds.max(1) {
        eprintln!("  round {index}: 1:1 phase, {concurrency} pairs");
        let direct = run_pairs(&api, target, &pairs, &phase).await?;
        eprintln!("  round {index}: group phase, {concurrency} tasks as {senders} members");
        let group_phase = run_group_phase(&api, target, &group, &args, concurrency, senders, &phase).await?;
        rounds.push((direct, group_phase));
    }

    let direct_rate = median(rounds.iter().map(|(d, _)| d.sends_per_second()).collect());
    let group_rate = median(rounds.iter().map(|(_, g)| g.sends_per_second()).collect());
    let ratio = 100.0 * group_rate / direct_rate.max(1e-9);
    let met = ratio >= TARGET_RATIO_PERCENT;
    let mut report = Report::new("group-send");
    report.line(format!(
        "transport {}, {concurrency} concurrent senders in both phases; group of {} members, \
         {senders} sending members, {} online; {} round(s) of {} s per phase",
        target.transport.name(),
        args.members,
        args.online,
        rounds.len(),
        args.duration
    ));
    let mut round_fields = Vec::new();
    for (index, (direct, group_phase)) in rounds.iter().enumerate() {
        let round_ratio = 100.0 * group_phase.sends_per_second() / direct.sends_per_second().max(1e-9);
        report
            .line(format!(
                "round {}: 1:1 {:.0} sends/s (failed {} {:?}; lost {}, duplicated {}); group {:.0} sends/s \
                 (failed {} {:?}); ratio {round_ratio:.1} %",
                index + 1,
                direct.sends_per_second(),
                direct.failures.values().sum::<u64>(),
                direct.failures,
                direct.lost,
                direct.duplicated,
                group_phase.sends_per_second(),
                group_phase.failures.values().sum::<u64>(),
                group_phase.failures
            ))
            .line(format!("  1:1 HTTP send latency   {}", direct.http.human()))
            .line(format!("  group HTTP send latency {}", group_phase.http.human()));
        let mut group_json =
            phase_json(group_phase.elapsed, group_phase.accepted, &group_phase.failures, &group_phase.http);
        if let Some(deliveries) = &group_phase.deliveries {
            report.line(format!(
                "  group delivery to {} online: {}; delivered {}, lost {}, duplicated {}, out of order {}",
                args.online,
                deliveries.latency.human(),
                deliveries.delivered,
                deliveries.lost,
                deliveries.duplicated,
                deliveries.out_of_order
            ));
            if let Some(object) = group_json.as_object_mut() {
                object.insert("delivery".into(), deliveries.json());
            }
        }
        round_fields.push(json!({
            "direct": direct_json(direct),
            "group": group_json,
            "round_ratio_percent": round(round_ratio),
        }));
    }
    report
        .line(format!(
            "median 1:1 {direct_rate:.0} sends/s, median group {group_rate:.0} sends/s: group / 1:1 = \
             {ratio:.1} % (target >= {TARGET_RATIO_PERCENT} %: {})",
            if met { "met" } else { "NOT met" }
        ))
        .field("transport", target.transport.name())
        .field("concurrency", concurrency as u64)
        .field("members", args.members as u64)
        .field("senders", senders as u64)
        .field("online", args.online as u64)
        .field("duration_s", args.duration)
        .field("rounds", Value::Array(round_fields))
        .field("direct_sends_per_s", round(direct_rate))
        .field("group_sends_per_s", round(group_rate))
        .field("ratio_percent", round(ratio))
        .field("target_met", met);
    report.machine_load(load_before);
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}

/// `concurrency` closed-loop tasks sending into the group for the phase's duration.
async fn run_group_phase(
    api: &Api,
    target: &Target,
    group: &Group,
    args: &GroupSendArgs,
    concurrency: usize,
    senders: usize,
    phase: &Phase,
) -> anyhow::Result<GroupPhase> {
    let tag = run_tag();
    let listeners = if args.online > 0 {
        let online = &group.members[senders..senders + args.online];
        let listeners = listen(api, target, online, &tag, 32).await?;
        // Each member coming online is announced to the others; let that settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some(listeners)
    } else {
        None
    };
    let accepted_at: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let numbers = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..concurrency {
        let api = api.clone();
        let token = group.members[index % senders].token.clone();
        let (conversation, tag) = (group.id.clone(), tag.clone());
        let (accepted_at, numbers) = (accepted_at.clone(), numbers.clone());
        let pace = Pace::new(phase, index, concurrency, started);
        tasks.push(tokio::spawn(drive(pace, move |_| {
            let (api, token, conversation) = (api.clone(), token.clone(), conversation.clone());
            let accepted_at = accepted_at.clone();
            let number = numbers.fetch_add(1, Ordering::Relaxed);
            let text = format!("{tag}{number} group load test message");
            async move {
                let begun = Instant::now();
                let status = api.send_to_conversation(&token, &conversation, &text).await?.0;
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
    let elapsed = started.elapsed();
    let (accepted, failures, http) = Sent::total(&sent);
    let deliveries = match listeners {
        Some(listeners) => {
            listeners.wait_for(accepted * listeners.sockets() as u64, phase.grace).await;
            let accepted_at = std::mem::take(&mut *accepted_at.lock().expect("never poisoned"));
            Some(listeners.finish(&accepted_at).await?)
        }
        None => None,
    };
    Ok(GroupPhase { elapsed, accepted, failures, http, deliveries })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn phase_json(elapsed: Duration, accepted: u64, failures: &BTreeMap<String, u64>, http: &Latency) -> Value {
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

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_of_odd_and_even_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
