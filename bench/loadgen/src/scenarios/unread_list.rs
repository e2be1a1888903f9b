//! `unread-list`: one reader with C conversations, some unread, walks its conversation list
//! page by page (`GET /api/v1/message/conversations?limit=200`) a few times; the time of each
//! page and of each full walk, and whether every conversation is listed once with exactly the
//! `unreadCount` seeded.
//!
//! Seeding (not timed) takes the fewest requests the API allows: most conversations are
//! groups of two (the reader and one helper, one `POST /api/v1/conversations` each), so two
//! registered users make thousands of conversations; a few are direct conversations with
//! users of their own. Who creates a group, the messages sent after, and read marks set the
//! unread counts (see [`Seed`]).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::stream::{self, StreamExt as _};
use serde_json::json;

use crate::api::{run_prefix, Api, ListedConversation, User};
use crate::report::{load_average, round, rss_kib, Latency, Report};
use crate::Target;

/// The product's target for one page of the list.
const TARGET_PAGE_MS: f64 = 50.0;

#[derive(Args, Clone)]
pub struct UnreadListArgs {
    /// Conversations of the reader, direct ones included.
    #[arg(long, default_value_t = 10_000)]
    pub conversations: usize,
    /// How many of them are direct conversations (each with a user of its own).
    #[arg(long, default_value_t = 20)]
    pub direct: usize,
    /// Conversations per page (`limit`).
    #[arg(long, default_value_t = 200)]
    pub page: usize,
    /// Full walks of the list.
    #[arg(long, default_value_t = 5)]
    pub walks: usize,
    /// Conversations seeded at once. (SQLite answered 503 to a third of the group creations
    /// at 16: each waits for the database's one write lock on its own.)
    #[arg(long, default_value_t = 4)]
    pub seed_concurrency: usize,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// How one conversation is seeded; [`Seed::unread`] is what the reader must then see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seed {
    /// The reader creates a group with the helper: its own entry, nothing unread.
    GroupByReader,
    /// The helper creates a group with the reader, then sends `extra` messages: the
    /// creation entry and every message are unread.
    GroupByHelper { extra: u32 },
    /// As `GroupByHelper`, then the reader marks the first message read (seq 2 of 1 + extra).
    GroupPartlyRead { extra: u32 },
    /// A direct conversation: the partner sends `before` messages, the reader replies once
    /// (if `reply`), the partner sends `after` more.
    Direct { before: u32, reply: bool, after: u32 },
}

impl Seed {
    /// The plan of the `i`-th group: a quarter read, the rest 1 to 4 unread.
    pub fn group(i: usize) -> Self {
        match i % 4 {
            0 => Seed::GroupByReader,
            1 => Seed::GroupByHelper { extra: 0 },
            2 => Seed::GroupByHelper { extra: 1 + (i / 4 % 3) as u32 },
            _ => Seed::GroupPartlyRead { extra: 3 },
        }
    }

    /// The plan of the `j`-th direct conversation.
    pub fn direct(j: usize) -> Self {
        match j % 3 {
            0 => Seed::Direct { before: 2, reply: true, after: 0 },
            1 => Seed::Direct { before: 0, reply: true, after: 1 + (j % 4) as u32 },
            _ => Seed::Direct { before: 1 + (j % 5) as u32, reply: false, after: 0 },
        }
    }

    /// The reader's `unreadCount` once seeded: entries after its last own entry or read mark.
    pub fn unread(self) -> u64 {
        match self {
            Seed::GroupByReader => 0,
            Seed::GroupByHelper { extra } => 1 + u64::from(extra),
            // Entries 1 (created) ..= 1 + extra; read up to entry 2.
            Seed::GroupPartlyRead { extra } => u64::from(extra) - 1,
            Seed::Direct { before, reply, after } => {
                u64::from(after) + if reply { 0 } else { u64::from(before) }
            }
        }
    }

    /// Requests it takes.
    fn requests(self) -> u64 {
        match self {
            Seed::GroupByReader => 1,
            Seed::GroupByHelper { extra } => 1 + u64::from(extra),
            Seed::GroupPartlyRead { extra } => 2 + u64::from(extra),
            Seed::Direct { before, reply, after } => u64::from(before + after) + u64::from(reply),
        }
    }
}

/// Seeds one conversation; its id.
async fn seed(api: &Api, reader: &User, other: &User, plan: Seed, i: usize) -> anyhow::Result<String> {
    let text = |k: u32| format!("unread seed {i} message {k}");
    match plan {
        Seed::GroupByReader => {
            api.create_group(&reader.token, &format!("unread {i}"), std::slice::from_ref(&other.id)).await
        }
        Seed::GroupByHelper { extra } | Seed::GroupPartlyRead { extra } => {
            let id = api
                .create_group(&other.token, &format!("unread {i}"), std::slice::from_ref(&reader.id))
                .await?;
            let mut first = None;
            for k in 0..extra {
                let (status, message) = api.send_to_conversation(&other.token, &id, &text(k)).await?;
                if !status.is_success() {
                    bail!("group send {k} into {id}: HTTP {status}");
                }
                first = first.or(message);
            }
            if let Seed::GroupPartlyRead { .. } = plan {
                let first = first.context("a partly read group has a first message with an _id")?;
                api.mark_read(&reader.token, &id, &first).await?;
            }
            Ok(id)
        }
        Seed::Direct { before, reply, after } => {
            let mut id = None;
            for k in 0..before {
                id = Some(api.send_in_conversation(&other.token, &reader.id, &text(k)).await?);
            }
            if reply {
                id = Some(api.send_in_conversation(&reader.token, &other.id, &text(before)).await?);
            }
            for k in 0..after {
                id = Some(api.send_in_conversation(&other.token, &reader.id, &text(before + 1 + k)).await?);
            }
            id.context("a direct conversation has at least one message")
        }
    }
}

/// One walk of the list from the first page to the last.
struct Walk {
    entries: Vec<ListedConversation>,
    pages: Vec<Duration>,
    total: Duration,
}

async fn walk(api: &Api, token: &str, limit: usize, most_pages: usize) -> anyhow::Result<Walk> {
    let mut entries = Vec::new();
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    let started = Instant::now();
    loop {
        let begun = Instant::now();
        let (status, page, next) = api.conversations(token, limit, cursor.as_deref()).await?;
        pages.push(begun.elapsed());
        if !status.is_success() {
            bail!("conversation list page {} answered HTTP {status}", pages.len());
        }
        entries.extend(page);
        match next {
            Some(next) if pages.len() < most_pages => cursor = Some(next),
            Some(_) => bail!("the list did not end within {most_pages} pages"),
            None => break,
        }
    }
    Ok(Walk { entries, pages, total: started.elapsed() })
}

/// A walk's entries against the seeded conversations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub listed: u64,
    /// Seeded conversations not listed.
    pub missing: u64,
    /// Entries of a conversation listed before in the same walk.
    pub duplicated: u64,
    /// Listed conversations that were not seeded.
    pub unexpected: u64,
    /// Entries whose `unreadCount` differs from the seeded count.
    pub wrong_unread: u64,
    /// Entries without an `unreadCount`.
    pub without_unread: u64,
    /// A few of the differences, for people.
    pub examples: Vec<String>,
}

impl Check {
    pub fn new(expected: &HashMap<String, u64>, entries: &[ListedConversation]) -> Self {
        let mut check = Check { listed: entries.len() as u64, ..Check::default() };
        let mut seen = HashSet::with_capacity(entries.len());
        for entry in entries {
            if !seen.insert(entry.id.as_str()) {
                check.duplicated += 1;
                continue;
            }
            let Some(&want) = expected.get(&entry.id) else {
                check.unexpected += 1;
                continue;
            };
            match entry.unread {
                Some(got) if got == want => {}
                Some(got) => {
                    check.wrong_unread += 1;
                    check.example(format!("{}: unreadCount {got}, seeded {want}", entry.id));
                }
                None => {
                    check.without_unread += 1;
                    check.example(format!("{}: no unreadCount (seeded {want})", entry.id));
                }
            }
        }
        check.missing = expected.keys().filter(|id| !seen.contains(id.as_str())).count() as u64;
        check
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 5 {
            self.examples.push(text);
        }
    }

    pub fn exact(&self) -> bool {
        self.missing + self.duplicated + self.unexpected + self.wrong_unread + self.without_unread == 0
    }
}

pub async fn run(target: &Target, args: UnreadListArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    anyhow::ensure!(args.direct <= args.conversations, "--direct exceeds --conversations");
    let prefix = run_prefix("u");
    let pair = api.register_many(&format!("{prefix}r"), 2, &target.password, 2).await?;
    let (reader, helper) = (&pair[0], &pair[1]);
    let partners = api
        .register_many(&format!("{prefix}d"), args.direct, &target.password, target.setup_concurrency)
        .await?;
    let groups = args.conversations - args.direct;
    let plans: Vec<(Seed, &User)> = (0..groups)
        .map(|i| (Seed::group(i), helper))
        .chain(partners.iter().enumerate().map(|(j, partner)| (Seed::direct(j), partner)))
        .collect();
    let requests: u64 = plans.iter().map(|(plan, _)| plan.requests()).sum();

    eprintln!("  seeding {} conversations ({requests} requests)", plans.len());
    let seeding = Instant::now();
    let seeded: Vec<anyhow::Result<(String, u64)>> = stream::iter(plans.iter().enumerate())
        .map(|(i, &(plan, other))| {
            let api = &api;
            async move { Ok((seed(api, reader, other, plan, i).await?, plan.unread())) }
        })
        .buffer_unordered(args.seed_concurrency.max(1))
        .collect()
        .await;
    let expected: HashMap<String, u64> = seeded.into_iter().collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(expected.len() == plans.len(), "two seeded conversations share an id");
    let seed_secs = seeding.elapsed().as_secs_f64();
    let unread_conversations = expected.values().filter(|n| **n > 0).count() as u64;
    let unread_total: u64 = expected.values().sum();

    let load_before = load_average();
    let limit = args.page.max(1);
    let most_pages = 2 * expected.len() / limit + 10;
    let mut page_latency = Latency::default();
    let mut walk_times = Vec::new();
    let mut pages_per_walk = 0;
    let mut checks = Vec::new();
    for _ in 0..args.walks.max(1) {
        let walk = walk(&api, &reader.token, limit, most_pages).await?;
        for page in &walk.pages {
            page_latency.record(*page);
        }
        pages_per_walk = walk.pages.len();
        walk_times.push(walk.total);
        checks.push(Check::new(&expected, &walk.entries));
    }
    walk_times.sort();
    let walk_median = walk_times[walk_times.len() / 2];
    let exact = checks.iter().all(Check::exact);
    let page_p50 = page_latency.ms(0.5);
    let met = page_p50 <= TARGET_PAGE_MS && exact;

    let mut report = Report::new("unread-list");
    report
        .line(format!(
            "{} conversations ({} groups of 2, {} direct), {unread_conversations} unread with \
             {unread_total} unread entries; seeded in {seed_secs:.1} s ({requests} requests)",
            expected.len(),
            groups,
            args.direct
        ))
        .line(format!(
            "{} walks of {pages_per_walk} pages of {limit}: walk median {:.1} ms (all: {})",
            walk_times.len(),
            walk_median.as_secs_f64() * 1000.0,
            walk_times
                .iter()
                .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
                .collect::<Vec<_>>()
                .join(" / ")
        ))
        .line(format!("page latency  {}", page_latency.human()));
    for (index, check) in checks.iter().enumerate() {
        if !check.exact() {
            report.line(format!("walk {}: {check:?}", index + 1));
        }
    }
    let first = checks.first().context("at least one walk")?;
    report
        .line(format!(
            "unreadCount exactly as seeded on every walk: {}; target median page <= {TARGET_PAGE_MS} ms: {}",
            if exact { "yes" } else { "NO" },
            if met { "met" } else { "NOT met" }
        ))
        .field("conversations", expected.len() as u64)
        .field("groups", groups as u64)
        .field("direct", args.direct as u64)
        .field("unread_conversations", unread_conversations)
        .field("unread_total", unread_total)
        .field("seed_s", round(seed_secs))
        .field("seed_requests", requests)
        .field("page_size", limit as u64)
        .field("walks", walk_times.len() as u64)
        .field("pages_per_walk", pages_per_walk as u64)
        .field("page", page_latency.json())
        .field("page_p50_ms", page_p50)
        .field("walk_ms_median", round(walk_median.as_secs_f64() * 1000.0))
        .field("walk_ms", walk_times.iter().map(|t| round(t.as_secs_f64() * 1000.0)).collect::<Vec<_>>())
        .field("listed", first.listed)
        .field("missing", checks.iter().map(|c| c.missing).sum::<u64>())
        .field("duplicated", checks.iter().map(|c| c.duplicated).sum::<u64>())
        .field("unexpected", checks.iter().map(|c| c.unexpected).sum::<u64>())
        .field("wrong_unread", checks.iter().map(|c| c.wrong_unread).sum::<u64>())
        .field("without_unread", checks.iter().map(|c| c.without_unread).sum::<u64>())
        .field("unread_exact", exact)
        .field("examples", json!(checks.iter().flat_map(|c| c.examples.clone()).take(5).collect::<Vec<_>>()))
        .field("target_met", met);
    report.machine_load(load_before);
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_unread_counts_follow_the_plan() {
        assert_eq!(Seed::GroupByReader.unread(), 0);
        assert_eq!(Seed::GroupByHelper { extra: 0 }.unread(), 1);
        assert_eq!(Seed::GroupByHelper { extra: 3 }.unread(), 4);
        assert_eq!(Seed::GroupPartlyRead { extra: 3 }.unread(), 2);
        assert_eq!(Seed::Direct { before: 2, reply: true, after: 0 }.unread(), 0);
        assert_eq!(Seed::Direct { before: 0, reply: true, after: 2 }.unread(), 2);
        assert_eq!(Seed::Direct { before: 3, reply: false, after: 0 }.unread(), 3);
    }

    #[test]
    fn the_plans_mix_read_and_unread_conversations() {
        let groups: Vec<u64> = (0..12).map(|i| Seed::group(i).unread()).collect();
        assert_eq!(groups, [0, 1, 2, 2, 0, 1, 3, 2, 0, 1, 4, 2]);
        let direct: Vec<u64> = (0..6).map(|j| Seed::direct(j).unread()).collect();
        assert_eq!(direct, [0, 2, 3, 0, 1, 1]);
        // Every direct plan sends at least one message, so it has a conversation.
        assert!((0..60).all(|j| Seed::direct(j).requests() > 0));
    }

    fn entry(id: &str, unread: Option<u64>) -> ListedConversation {
        ListedConversation { id: id.into(), unread }
    }

    #[test]
    fn a_walk_is_exact_only_with_every_conversation_once_and_its_count() {
        let expected: HashMap<String, u64> =
            [("a", 0), ("b", 2), ("c", 1)].map(|(k, v)| (k.into(), v)).into();
        let good = [entry("b", Some(2)), entry("a", Some(0)), entry("c", Some(1))];
        assert!(Check::new(&expected, &good).exact());

        let bad = [entry("b", Some(1)), entry("a", None), entry("a", Some(0)), entry("z", Some(0))];
        let check = Check::new(&expected, &bad);
        assert_eq!(
            (
                check.listed,
                check.missing,
                check.duplicated,
                check.unexpected,
                check.wrong_unread,
                check.without_unread
            ),
            (4, 1, 1, 1, 1, 1)
        );
        assert!(!check.exact());
        assert_eq!(check.examples.len(), 2);
    }
}
