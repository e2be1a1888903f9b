//! `changes`: message changes next to sends, in one run on one server and the same users.
//!
//! N users (`--users`, 100 by default) are members of one group. Each round runs three
//! phases of `--duration` seconds, every user a closed loop of its own (its next request
//! when the last one is answered):
//!
//! - `sends`: each user posts into the group;
//! - `reactions`: each user adds its reaction to the same hot message, takes it back, adds
//!   it again, … (user `i` reacts with the `i % --emojis`-th emoji);
//! - `edits`: each user edits its own messages of the group (`--own` of them, posted during
//!   setup) in turn, a new text each time.
//!
//! All three serialize on the group's row in the store (a send, a reaction and an edit each
//! take the group's next seq), so the rates compare the cost of a change with that of a
//! send. With several rounds (`--rounds`) the phases alternate, so a machine whose speed
//! drifts affects each alike; the figures are the medians of the rounds, and the ratios
//! those of the medians.
//!
//! Every answer other than 2xx is counted as a failure, by kind. Correctness under load:
//! each user knows whether its reaction is there (its last answered request); a request
//! whose outcome is unknown (no answer, or 503: the store may have made the change after
//! its deadline) is repeated after the phase until it is answered, which makes the state
//! known again (adding or taking back twice changes nothing). At the end the hot message's
//! reactions, read from the history, must count exactly the users whose reaction is there,
//! emoji by emoji.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::stream::{self, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::groups::{run_tag, setup_group, Group};
use super::send::failure_kind;
use crate::api::{run_prefix, Api, User};
use crate::report::{load_average, round, rss_kib, Latency, Report};
use crate::Target;

/// The emoji the users react with, in order: user `i` takes the `i % --emojis`-th.
const EMOJIS: [&str; 8] = ["👍", "❤️", "😂", "🎉", "🙏", "🔥", "👀", "✅"];

/// Repeats of a request whose outcome is unknown before the run gives up.
const SETTLE_ATTEMPTS: usize = 20;

#[derive(Args, Clone)]
pub struct ChangesArgs {
    /// Members of the group, its creator included; each runs one closed loop per phase.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Different emoji reacted with on the hot message (1 to 8).
    #[arg(long, default_value_t = 4)]
    pub emojis: usize,
    /// Messages each user posts during setup, to edit in turn.
    #[arg(long, default_value_t = 3)]
    pub own: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Rounds of the three phases.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// The three kinds of request measured.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Sends,
    Reactions,
    Edits,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Sends, Kind::Reactions, Kind::Edits];

    fn name(self) -> &'static str {
        match self {
            Kind::Sends => "sends",
            Kind::Reactions => "reactions",
            Kind::Edits => "edits",
        }
    }
}

/// What one phase measured.
#[derive(Default)]
struct PhaseOutcome {
    elapsed: Duration,
    accepted: u64,
    failures: BTreeMap<String, u64>,
    http: Latency,
    /// Requests of unknown outcome repeated after the phase (reactions only).
    settled: u64,
}

impl PhaseOutcome {
    fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn json(&self) -> Value {
        json!({
            "elapsed_s": round(self.elapsed.as_secs_f64()),
            "accepted": self.accepted,
            "per_s": round(self.per_second()),
            "failed": self.failed(),
            "failures": self.failures,
            "settled": self.settled,
            "http": self.http.json(),
        })
    }

    fn add(&mut self, task: TaskOutcome) {
        self.accepted += task.accepted;
        self.http.merge(&task.http);
        for (kind, count) in task.failures {
            *self.failures.entry(kind).or_default() += count;
        }
    }
}

/// One user's loop in one phase.
#[derive(Default)]
struct TaskOutcome {
    accepted: u64,
    failures: BTreeMap<String, u64>,
    http: Latency,
}

impl TaskOutcome {
    /// Counts one answer; returns whether it was 2xx.
    fn count(&mut self, result: anyhow::Result<StatusCode>, elapsed: Duration) -> bool {
        match result {
            Ok(status) if status.is_success() => {
                self.accepted += 1;
                self.http.record(elapsed);
                true
            }
            other => {
                *self.failures.entry(failure_kind(other)).or_default() += 1;
                false
            }
        }
    }
}

/// A user of the run: the messages it posted to edit, and its reaction on the hot message.
#[derive(Clone)]
struct Member {
    user: User,
    emoji: &'static str,
    own: Vec<String>,
    /// Whether its reaction is on the hot message, as its answered requests say.
    reacted: bool,
}

/// The group, its hot message, and the message right after it (to read the hot one back).
struct Setup {
    group: Group,
    hot: String,
    marker: String,
    members: Vec<Member>,
}

pub async fn run(target: &Target, args: ChangesArgs) -> anyhow::Result<Report> {
    anyhow::ensure!((1..=EMOJIS.len()).contains(&args.emojis), "--emojis must be 1 to {}", EMOJIS.len());
    anyhow::ensure!(args.own >= 1, "--own must be at least 1");
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let mut setup = set_up(&api, target, &args).await?;
    let duration = Duration::from_secs_f64(args.duration);
    let tag = run_tag();

    let load_before = load_average();
    let mut rounds: Vec<BTreeMap<Kind, PhaseOutcome>> = Vec::new();
    for index in 1..=args.rounds.max(1) {
        let mut outcomes = BTreeMap::new();
        for kind in Kind::ALL {
            eprintln!("  round {index}: {} phase, {} users", kind.name(), setup.members.len());
            let outcome = run_phase(&api, &mut setup, kind, duration, &format!("{tag}{index}")).await?;
            outcomes.insert(kind, outcome);
        }
        rounds.push(outcomes);
    }
    let load_after_phases = load_average();

    // The hot message as the history shows it, against what the users' answers say.
    let hot = read_hot(&api, &setup).await?;
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for member in setup.members.iter().filter(|m| m.reacted) {
        *expected.entry(member.emoji).or_default() += 1;
    }
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for reaction in hot["reactions"].as_array().into_iter().flatten() {
        let emoji = reaction["emoji"].as_str().unwrap_or_default().to_owned();
        counted.insert(emoji, reaction["count"].as_u64().unwrap_or(0));
    }
    let expected: BTreeMap<String, u64> = expected.into_iter().map(|(e, c)| (e.to_owned(), c)).collect();
    let exact = counted == expected;

    let median_of = |kind: Kind| median(rounds.iter().map(|r| r[&kind].per_second()).collect());
    let (sends, reactions, edits) =
        (median_of(Kind::Sends), median_of(Kind::Reactions), median_of(Kind::Edits));
    let failed: u64 = rounds.iter().flat_map(|r| r.values()).map(PhaseOutcome::failed).sum();
    let settled: u64 = rounds.iter().flat_map(|r| r.values()).map(|p| p.settled).sum();

    let mut report = Report::new("changes");
    report.line(format!(
        "{} users in one group, {} emoji on one hot message, {} own messages each to edit; {} round(s) of {} s \
         per phase, every user a closed loop",
        setup.members.len(),
        args.emojis,
        args.own,
        rounds.len(),
        args.duration
    ));
    let mut round_fields = Vec::new();
    for (index, outcomes) in rounds.iter().enumerate() {
        let mut line = format!("round {}:", index + 1);
        let mut fields = serde_json::Map::new();
        for (kind, outcome) in outcomes {
            line.push_str(&format!(
                " {} {:.0}/s (failed {} {:?});",
                kind.name(),
                outcome.per_second(),
                outcome.failed(),
                outcome.failures
            ));
            fields.insert(kind.name().into(), outcome.json());
        }
        report.line(line);
        for (kind, outcome) in outcomes {
            report.line(format!("  {:<9} HTTP latency {}", kind.name(), outcome.http.human()));
        }
        round_fields.push(Value::Object(fields));
    }
    let ratio = |x: f64| round(100.0 * x / sends.max(1e-9));
    report
        .line(format!(
            "median sends {sends:.0}/s, reactions {reactions:.0}/s ({} % of sends), edits {edits:.0}/s ({} % of \
             sends); {failed} requests not answered 2xx, {settled} of unknown outcome repeated",
            ratio(reactions),
            ratio(edits)
        ))
        .line(format!(
            "hot message: reactions {counted:?}, expected from the users' answers {expected:?}: {}",
            if exact { "exact" } else { "NOT exact" }
        ))
        .field("users", setup.members.len() as u64)
        .field("emojis", args.emojis as u64)
        .field("duration_s", args.duration)
        .field("rounds", Value::Array(round_fields))
        .field("sends_per_s", round(sends))
        .field("reactions_per_s", round(reactions))
        .field("edits_per_s", round(edits))
        .field("reactions_percent_of_sends", ratio(reactions))
        .field("edits_percent_of_sends", ratio(edits))
        .field("failed", failed)
        .field("settled", settled)
        .field("hot_reactions", json!(counted))
        .field("hot_reactions_expected", json!(expected))
        .field("hot_reactions_exact", exact);
    report.machine_load(load_before);
    report.field("load_after_phases", load_after_phases);
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}

/// Registers the users in one group, posts the hot message (and one after it) as the
/// owner, and each user's own messages (setup, not timed).
async fn set_up(api: &Api, target: &Target, args: &ChangesArgs) -> anyhow::Result<Setup> {
    let prefix = run_prefix("ch");
    let group = setup_group(api, target, args.users.max(2), args.users.max(2), &prefix).await?;
    let owner = &group.members[0];
    let posted = |text: &str, token: &str| {
        let (api, text, token, id) = (api.clone(), text.to_owned(), token.to_owned(), group.id.clone());
        async move {
            match api.send_to_conversation(&token, &id, &text).await? {
                (status, Some(message)) if status.is_success() => Ok(message),
                (status, _) => anyhow::bail!("posting {text:?} during setup: HTTP {status}"),
            }
        }
    };
    let hot = posted("the hot message", &owner.token).await?;
    let marker = posted("right after the hot message", &owner.token).await?;
    let requests: Vec<(usize, usize)> =
        (0..group.members.len()).flat_map(|u| (0..args.own).map(move |n| (u, n))).collect();
    let own: Vec<anyhow::Result<(usize, String)>> = stream::iter(requests)
        .map(|(u, n)| {
            let posted = posted(&format!("message {n} of {u}, to be edited"), &group.members[u].token);
            async move { posted.await.map(|id| (u, id)) }
        })
        .buffer_unordered(target.setup_concurrency.max(1))
        .collect()
        .await;
    let mut members: Vec<Member> = group
        .members
        .iter()
        .enumerate()
        .map(|(i, user)| Member {
            user: user.clone(),
            emoji: EMOJIS[i % args.emojis],
            own: Vec::new(),
            reacted: false,
        })
        .collect();
    for posted in own {
        let (u, id) = posted?;
        members[u].own.push(id);
    }
    eprintln!("  hot message {hot}; {} messages to edit", members.len() * args.own);
    Ok(Setup { group, hot, marker, members })
}

/// One phase: every user's closed loop of `kind` requests for `duration`.
async fn run_phase(
    api: &Api,
    setup: &mut Setup,
    kind: Kind,
    duration: Duration,
    tag: &str,
) -> anyhow::Result<PhaseOutcome> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (index, member) in setup.members.iter().enumerate() {
        let (api, member, group, hot, tag) =
            (api.clone(), member.clone(), setup.group.id.clone(), setup.hot.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = TaskOutcome::default();
            let mut member = member;
            // A reaction request whose outcome is unknown: whether it added.
            let mut unknown: Option<bool> = None;
            let mut n = 0usize;
            while Instant::now() < deadline {
                n += 1;
                let begun = Instant::now();
                let user = &member.user;
                match kind {
                    Kind::Sends => {
                        let text = format!("{tag} send {n} of {index}");
                        let result = api.send_to_conversation(&user.token, &group, &text).await.map(|(s, _)| s);
                        out.count(result, begun.elapsed());
                    }
                    Kind::Edits => {
                        let message = &member.own[n % member.own.len()];
                        let text = format!("{tag} edit {n} of {index}");
                        let result = api.edit(&user.token, &group, message, &text).await;
                        out.count(result, begun.elapsed());
                    }
                    Kind::Reactions => {
                        // After an unknown outcome, the same request again settles it.
                        let add = unknown.unwrap_or(!member.reacted);
                        let result = api.react(&user.token, &group, &hot, member.emoji, add).await;
                        let refused = matches!(&result, Ok(s) if !s.is_success() && *s != StatusCode::SERVICE_UNAVAILABLE);
                        if out.count(result, begun.elapsed()) {
                            member.reacted = add;
                            unknown = None;
                        } else if !refused {
                            unknown = Some(add);
                        }
                    }
                }
            }
            let mut settled = 0u64;
            if let Some(add) = unknown {
                settled = 1;
                member.reacted = settle(&api, &member, &group, &hot, add).await?;
            }
            anyhow::Ok((out, member.reacted, settled))
        }));
    }
    let mut outcome = PhaseOutcome::default();
    for (index, task) in tasks.into_iter().enumerate() {
        let (task, reacted, settled) = task.await??;
        outcome.add(task);
        outcome.settled += settled;
        setup.members[index].reacted = reacted;
    }
    // Outstanding requests end after the deadline: the phase lasted until the last answer.
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// Repeats a reaction request of unknown outcome until it is answered: then the reaction is
/// there (`add`) or not, whatever the first attempt did.
async fn settle(api: &Api, member: &Member, group: &str, hot: &str, add: bool) -> anyhow::Result<bool> {
    for attempt in 0..SETTLE_ATTEMPTS {
        match api.react(&member.user.token, group, hot, member.emoji, add).await {
            Ok(status) if status.is_success() => return Ok(add),
            Ok(status) if status != StatusCode::SERVICE_UNAVAILABLE => {
                anyhow::bail!("settling the reaction of {}: HTTP {status}", member.user.username)
            }
            _ => tokio::time::sleep(Duration::from_millis(100 * (attempt as u64 + 1))).await,
        }
    }
    anyhow::bail!(
        "settling the reaction of {}: no answer in {SETTLE_ATTEMPTS} attempts",
        member.user.username
    )
}

/// The hot message as the owner's history shows it: the one message before the marker.
async fn read_hot(api: &Api, setup: &Setup) -> anyhow::Result<Value> {
    let owner = &setup.group.members[0];
    let page = api.conversation_page(&owner.token, &setup.group.id, &setup.marker, 1).await?;
    match page.into_iter().next() {
        Some(message) if message["_id"] == setup.hot.as_str() => Ok(message),
        other => anyhow::bail!("the message before the marker is not the hot message: {other:?}"),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_counts_2xx_as_accepted_and_the_rest_by_kind() {
        let mut task = TaskOutcome::default();
        assert!(task.count(Ok(StatusCode::OK), Duration::from_millis(3)));
        assert!(!task.count(Ok(StatusCode::CONFLICT), Duration::from_millis(3)));
        assert!(!task.count(Err(anyhow::anyhow!("operation timed out")), Duration::from_millis(3)));
        assert_eq!(task.accepted, 1);
        assert_eq!(task.http.count(), 1);
        let failures: Vec<(&str, u64)> = task.failures.iter().map(|(k, c)| (k.as_str(), *c)).collect();
        assert_eq!(failures, [("http_409", 1), ("timeout", 1)]);
    }

    #[test]
    fn every_emoji_is_one_fully_qualified_emoji() {
        for emoji in EMOJIS {
            assert!(!emoji.is_empty() && emoji.chars().count() <= 2, "{emoji}");
        }
        assert_eq!(EMOJIS[1], "\u{2764}\u{fe0f}");
    }
}
