//! `history`: seeds one conversation with M messages (not timed), walks it once to collect
//! the cursor of every full page, then C workers fetch random full pages for the duration.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::stream::{self, StreamExt as _};
use rand::Rng as _;
use serde_json::json;

use crate::api::{run_prefix, Api};
use crate::report::{round, rss_kib, Latency, Report};
use crate::Target;

#[derive(Args, Clone)]
pub struct HistoryArgs {
    /// Messages to seed the conversation with.
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    pub page: usize,
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of reading.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Concurrent sends while seeding.
    #[arg(long, default_value_t = 16)]
    pub seed_concurrency: usize,
    /// Server process id, to report its RSS.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

pub async fn run(target: &Target, args: HistoryArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let users = api.register_many(&run_prefix("h"), 2, &target.password, 2).await?;
    let (reader, other) = (&users[0], &users[1]);

    eprintln!("  seeding {} messages", args.messages);
    let seeded = Instant::now();
    let results: Vec<anyhow::Result<bool>> = stream::iter(0..args.messages)
        .map(|i| {
            let api = &api;
            async move {
                // Both directions, as in a real conversation.
                let (from, to) = if i % 2 == 0 { (reader, other) } else { (other, reader) };
                let text = format!("history seed message number {i} with a little text in it");
                Ok(api.send(&from.token, &to.id, &text).await?.0.is_success())
            }
        })
        .buffer_unordered(args.seed_concurrency.max(1))
        .collect()
        .await;
    let stored =
        results.into_iter().collect::<anyhow::Result<Vec<bool>>>()?.into_iter().filter(|ok| *ok).count();
    if stored < args.messages {
        bail!("seeding stored only {stored} of {} messages", args.messages);
    }
    let seed_secs = seeded.elapsed().as_secs_f64();

    // The cursor of every full page, newest first (None: the newest page).
    let mut cursors: Vec<Option<String>> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..=(args.messages / args.page.max(1)) {
        let (status, ids) = api.history(&reader.token, &other.id, args.page, before.as_deref()).await?;
        if !status.is_success() {
            bail!("get-messages answered HTTP {status}");
        }
        if ids.len() < args.page {
            break;
        }
        cursors.push(before.take());
        before = Some(ids.first().cloned().context("a full page has a first id")?);
    }
    if cursors.is_empty() {
        cursors.push(None);
    }

    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let api = api.clone();
        let token = reader.token.clone();
        let other = other.id.clone();
        let cursors = cursors.clone();
        let page = args.page;
        workers.push(tokio::spawn(async move {
            let mut latency = Latency::default();
            let (mut pages, mut messages, mut short) = (0u64, 0u64, 0u64);
            let mut failures: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                let cursor = &cursors[rand::rng().random_range(0..cursors.len())];
                let begun = Instant::now();
                match api.history(&token, &other, page, cursor.as_deref()).await {
                    Ok((status, ids)) if status.is_success() => {
                        latency.record(begun.elapsed());
                        pages += 1;
                        messages += ids.len() as u64;
                        if ids.len() < page {
                            short += 1;
                        }
                    }
                    Ok((status, _)) => *failures.entry(format!("http_{}", status.as_u16())).or_default() += 1,
                    Err(_) => *failures.entry("transport_error".into()).or_default() += 1,
                }
            }
            (latency, pages, messages, short, failures)
        }));
    }
    let mut latency = Latency::default();
    let (mut pages, mut messages, mut short) = (0u64, 0u64, 0u64);
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for worker in workers {
        let (l, p, m, s, f) = worker.await?;
        latency.merge(&l);
        pages += p;
        messages += m;
        short += s;
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let per_second = pages as f64 / elapsed;

    let mut report = Report::new("history");
    report
        .line(format!(
            "seeded {} messages in {:.1} s ({} full pages); {} readers",
            args.messages,
            seed_secs,
            cursors.len(),
            args.concurrency
        ))
        .line(format!(
            "{pages} pages ({messages} messages, {short} short) in {elapsed:.2} s = {per_second:.0} pages/s, failed {failures:?}"
        ))
        .line(format!("page latency  {}", latency.human()))
        .field("transport", target.transport.name())
        .field("seeded", args.messages as u64)
        .field("page_size", args.page as u64)
        .field("concurrency", args.concurrency as u64)
        .field("pages", pages)
        .field("messages", messages)
        .field("short_pages", short)
        .field("pages_per_s", round(per_second))
        .field("failures", json!(failures))
        .field("latency", latency.json());
    if let Some(rss) = args.server_pid.and_then(rss_kib) {
        report.line(format!("server RSS {:.1} MiB", rss as f64 / 1024.0)).field("server_rss_kib", rss);
    }
    Ok(report)
}
