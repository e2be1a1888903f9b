//! `presence-storm`: N distinct users connect within a second, one socket each, and every
//! frame the sockets receive is counted, from the storm's start until the server has been
//! quiet for a while: what presence costs when everyone arrives at once, in either presence
//! mode (docs/API.md, "Presence"; the server's `presence.full_list_max` picks the mode).
//!
//! Setup (not measured): the users are registered, and with `--ring K` user *i* sends one
//! direct message to each of users *i*+1 … *i*+K (mod N), so every user has 2K conversation
//! partners for the scoped mode to announce. Socket *i* then opens at `i / N × --spread`
//! seconds after the storm's start, whether or not earlier ones have finished opening.
//!
//! Counted on the client side: frames and bytes in all, and by event (`onlineUsers`,
//! `getOnlineUsers`, `presence`, `presenceMode`, anything else). Each socket keeps the
//! client's view the API describes (`onlineUsers` replaces it, each `{userId, online}` of
//! `presence` sets one entry), reduced to what the run can check: whether every partner ends
//! online and, in the full-list mode, whether the last list names all N users (so the
//! server should hold no other user online). Read on the server: its CPU time (user +
//! system, /proc/<pid>/stat) just before the first connect and once the count ends; the pid
//! is `--server-pid` or the process listening on the `--url` port.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::stream::{self, StreamExt as _};
use serde::Deserialize;
use tokio::sync::watch;

use crate::api::{run_prefix, Api, User};
use crate::report::{cpu_seconds, load_average, round, Latency, Report};
use crate::socket::{self, Ended};
use crate::{Target, Transport};

#[derive(Args, Clone)]
pub struct PresenceStormArgs {
    /// Distinct users, one socket each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Direct conversations in a ring: user i sends one message to each of users i+1 … i+K
    /// (mod N), so each user has 2K partners; 0 for none.
    #[arg(long, default_value_t = 1)]
    pub ring: usize,
    /// Seconds the connects are spread over, uniformly.
    #[arg(long, default_value_t = 1.0)]
    pub spread: f64,
    /// Seconds without any frame, once every socket has opened, that end the count.
    #[arg(long, default_value_t = 2.0)]
    pub quiet: f64,
    /// Seconds from the storm's start after which the count ends even if frames still come.
    #[arg(long, default_value_t = 60.0)]
    pub max_wait: f64,
    /// Loopback source addresses the sockets are spread over, round-robin (see `connect`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addresses: u8,
    /// Server process id, for its CPU time; found from the `--url` port when not given.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Frames and bytes every socket received, shared by the sockets' tasks.
#[derive(Default)]
struct Counts {
    frames: AtomicU64,
    bytes: AtomicU64,
    online_users: AtomicU64,
    get_online_users: AtomicU64,
    presence: AtomicU64,
    presence_mode: AtomicU64,
    other: AtomicU64,
    /// Microseconds from the storm's start to the latest frame.
    last_frame_us: AtomicU64,
    /// The count ended: what the sockets' closing brings (their users going offline) is
    /// not counted.
    ended: AtomicBool,
}

/// One socket's client view, reduced to what the run checks.
struct View {
    transport: Transport,
    /// The partners' ids, and each as it appears quoted in a list.
    partners: Vec<(String, String)>,
    partner_online: Vec<bool>,
    /// Ids in the last `onlineUsers`.
    list_len: Option<usize>,
    scoped: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    user_id: String,
    online: bool,
}

impl View {
    fn new(transport: Transport, partners: Vec<String>) -> Self {
        let partner_online = vec![false; partners.len()];
        let partners = partners.into_iter().map(|id| (format!("\"{id}\""), id)).collect();
        Self { transport, partners, partner_online, list_len: None, scoped: false }
    }

    fn on_frame(&mut self, text: &str, counts: &Counts, started: Instant) {
        if counts.ended.load(Ordering::Relaxed) {
            return;
        }
        counts.frames.fetch_add(1, Ordering::Relaxed);
        counts.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
        counts.last_frame_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let Some((name, data)) = split_event(self.transport, text) else {
            counts.other.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match name {
            "onlineUsers" => {
                counts.online_users.fetch_add(1, Ordering::Relaxed);
                // Ids are plain strings: two quotes each.
                self.list_len = Some(data.bytes().filter(|b| *b == b'"').count() / 2);
                for ((quoted, _), online) in self.partners.iter().zip(&mut self.partner_online) {
                    *online = data.contains(quoted.as_str());
                }
            }
            "getOnlineUsers" => {
                counts.get_online_users.fetch_add(1, Ordering::Relaxed);
            }
            "presence" => {
                counts.presence.fetch_add(1, Ordering::Relaxed);
                let changes = serde_json::Deserializer::from_str(data).into_iter::<Vec<Change>>().next();
                for change in changes.and_then(Result::ok).unwrap_or_default() {
                    if let Some(i) = self.partners.iter().position(|(_, id)| *id == change.user_id) {
                        self.partner_online[i] = change.online;
                    }
                }
            }
            "presenceMode" => {
                counts.presence_mode.fetch_add(1, Ordering::Relaxed);
                self.scoped = data.contains("scoped");
            }
            _ => {
                counts.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every partner online and, in the full-list mode, all `users` in the last list.
    fn complete(&self, users: usize) -> bool {
        self.partner_online.iter().all(|online| *online) && (self.scoped || self.list_len == Some(users))
    }
}

/// The event name of a frame and the text from its payload on (the payload may be followed
/// by the envelope's closing characters).
fn split_event(transport: Transport, text: &str) -> Option<(&str, &str)> {
    let rest = match transport {
        Transport::Ws => text.strip_prefix("{\"event\":\"")?,
        Transport::Socketio => {
            let body = text.strip_prefix("42")?.trim_start_matches(|c: char| c.is_ascii_digit());
            body.strip_prefix("[\"")?
        }
    };
    let end = rest.find('"')?;
    let (name, after) = rest.split_at(end);
    let data = match transport {
        Transport::Ws => after.strip_prefix("\",\"data\":").unwrap_or(""),
        Transport::Socketio => after.strip_prefix("\",").unwrap_or(""),
    };
    Some((name, data))
}

pub async fn run(target: &Target, args: PresenceStormArgs) -> anyhow::Result<Report> {
    let api = Api::new(target)?;
    super::wait_ready(&api).await?;
    let n = args.users.max(2);
    let ring = args.ring.min((n - 1) / 2);
    let server_pid = args.server_pid.or_else(|| listening_pid(&target.url));
    if server_pid.is_none() {
        eprintln!(
            "  no server pid (--server-pid, or nothing of ours listens on the --url port): no CPU figures"
        );
    }

    let prefix = run_prefix("ps");
    let users =
        api.register_many(&format!("{prefix}u"), n, &target.password, target.setup_concurrency).await?;
    let sends: Vec<(usize, usize)> = (0..n).flat_map(|i| (1..=ring).map(move |k| (i, (i + k) % n))).collect();
    let sent: Vec<anyhow::Result<String>> = stream::iter(&sends)
        .map(|&(from, to)| {
            let (api, users) = (&api, &users);
            async move { api.send_in_conversation(&users[from].token, &users[to].id, "hello").await }
        })
        .buffer_unordered(target.setup_concurrency.max(1))
        .collect()
        .await;
    for result in sent {
        result?;
    }
    eprintln!("  {} direct conversations in a ring of {n} users ({} partners each)", sends.len(), 2 * ring);

    let load_before = load_average();
    let cpu_before = server_pid.and_then(cpu_seconds);
    let counts = Arc::new(Counts::default());
    let settled = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let timeout = Duration::from_secs_f64(target.timeout);
    let ws_base = api.ws_base();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, user) in users.iter().enumerate() {
        let at = started + Duration::from_secs_f64(args.spread * i as f64 / n as f64);
        let partners = partners_of(&users, i, ring);
        let (token, ws_base, transport) = (user.token.clone(), ws_base.clone(), target.transport);
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % usize::from(args.source_addresses)) as u8));
        let (counts, settled, stopped) = (counts.clone(), settled.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let began = Instant::now();
            let socket = socket::connect_from(&ws_base, transport, &token, timeout, source).await;
            let connect_time = began.elapsed();
            settled.fetch_add(1, Ordering::Relaxed);
            let socket = match socket {
                Ok(socket) => socket,
                Err(error) => return Err(format!("{error:#}")),
            };
            let mut view = View::new(transport, partners);
            let ended = socket.run_raw(stopped, "", |text| view.on_frame(text, &counts, started)).await;
            Ok((connect_time, view, ended))
        }));
    }

    // Until every socket has opened (or failed) and no frame came for `--quiet` seconds.
    let quiet = Duration::from_secs_f64(args.quiet);
    let max_wait = Duration::from_secs_f64(args.max_wait);
    let mut all_settled_at = None;
    let quieted = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = started.elapsed();
        if all_settled_at.is_none() && settled.load(Ordering::Relaxed) == n as u64 {
            all_settled_at = Some(now);
        }
        let last = Duration::from_micros(counts.last_frame_us.load(Ordering::Relaxed));
        if all_settled_at.is_some() && now.saturating_sub(last.max(all_settled_at.unwrap_or(now))) >= quiet {
            break true;
        }
        if now >= max_wait {
            break false;
        }
    };
    counts.ended.store(true, Ordering::Relaxed);
    let cpu_after = server_pid.and_then(cpu_seconds);
    let counted_for = started.elapsed();
    let _ = stop.send(true);

    let mut connect = Latency::default();
    let (mut opened, mut failed, mut lost, mut complete) = (0u64, 0u64, 0u64, 0u64);
    for task in tasks {
        match task.await {
            Ok(Ok((connect_time, view, ended))) => {
                opened += 1;
                connect.record(connect_time);
                if let Ended::Lost(_) = ended {
                    lost += 1;
                }
                if view.complete(n) {
                    complete += 1;
                }
            }
            Ok(Err(error)) => {
                if failed < 3 {
                    eprintln!("  connection failed: {error}");
                }
                failed += 1;
            }
            Err(error) => {
                failed += 1;
                eprintln!("  a socket's task failed: {error}");
            }
        }
    }

    let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let frames = load(&counts.frames);
    let bytes = load(&counts.bytes);
    let last_frame_s = load(&counts.last_frame_us) as f64 / 1e6;
    let all_open_s = all_settled_at.map_or(f64::NAN, |at| at.as_secs_f64());
    let mut report = Report::new("presence-storm");
    report
        .line(format!(
            "transport {}: {opened} of {n} users' sockets open ({failed} failed, {lost} lost), {} partners each, connects spread over {} s; all settled at {all_open_s:.2} s",
            target.transport.name(),
            2 * ring,
            args.spread,
        ))
        .line(format!("connect time {}", connect.human()))
        .line(format!(
            "frames {frames} = {:.1} per user: onlineUsers {}, getOnlineUsers {}, presence {}, presenceMode {}, other {}",
            frames as f64 / n as f64,
            load(&counts.online_users),
            load(&counts.get_online_users),
            load(&counts.presence),
            load(&counts.presence_mode),
            load(&counts.other),
        ))
        .line(format!(
            "bytes {:.1} MiB = {:.1} KiB per user; last frame at {last_frame_s:.2} s, count ended at {:.2} s ({})",
            bytes as f64 / 1048576.0,
            bytes as f64 / 1024.0 / n as f64,
            counted_for.as_secs_f64(),
            if quieted { format!("{} s without a frame", args.quiet) } else { "still busy at --max-wait".into() },
        ))
        .line(format!("sockets whose view ended complete: {complete} of {opened}"))
        .field("transport", target.transport.name())
        .field("users", n as u64)
        .field("partners_per_user", (2 * ring) as u64)
        .field("spread_s", args.spread)
        .field("opened", opened)
        .field("failed", failed)
        .field("lost", lost)
        .field("all_settled_s", round(all_open_s))
        .field("frames", frames)
        .field("frames_per_user", round(frames as f64 / n as f64))
        .field("online_users_frames", load(&counts.online_users))
        .field("get_online_users_frames", load(&counts.get_online_users))
        .field("presence_frames", load(&counts.presence))
        .field("presence_mode_frames", load(&counts.presence_mode))
        .field("other_frames", load(&counts.other))
        .field("bytes", bytes)
        .field("last_frame_s", round(last_frame_s))
        .field("counted_s", round(counted_for.as_secs_f64()))
        .field("quiet", quieted)
        .field("complete_views", complete)
        .field("connect", connect.json());
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        let cpu = after - before;
        report
            .line(format!(
                "server CPU {cpu:.2} s (user + system) from the first connect to the end of the count = {:.2} ms per user",
                cpu * 1000.0 / n as f64
            ))
            .field("server_cpu_s", round(cpu))
            .field("server_cpu_ms_per_user", round(cpu * 1000.0 / n as f64));
    }
    report.machine_load(load_before);
    Ok(report)
}

/// The ids of user `i`'s partners in a ring where each user wrote to the next `ring` users.
fn partners_of(users: &[User], i: usize, ring: usize) -> Vec<String> {
    let n = users.len();
    (1..=ring).flat_map(|k| [users[(i + k) % n].id.clone(), users[(i + n - k) % n].id.clone()]).collect()
}

/// The process listening on the TCP port of `url`, found through /proc/net/tcp{,6} and the
/// processes' open sockets.
fn listening_pid(url: &str) -> Option<u32> {
    let authority = url.strip_prefix("http://")?.split('/').next()?;
    let port: u16 = authority.rsplit(':').next()?.parse().ok()?;
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| listening_inodes(&table, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| link.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The inodes of the sockets listening on `port` in a /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<String> {
    let suffix = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, then st (0A is LISTEN), then the inode in column 10.
            (fields.get(1)?.ends_with(&suffix) && *fields.get(3)? == "0A")
                .then(|| fields.get(9).map(|s| s.to_string()))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_into_name_and_payload_on_both_endpoints() {
        let (name, data) = split_event(Transport::Ws, r#"{"event":"onlineUsers","data":["a","b"]}"#).unwrap();
        assert_eq!((name, data), ("onlineUsers", r#"["a","b"]}"#));
        let (name, data) =
            split_event(Transport::Socketio, r#"42["presence",[{"userId":"a","online":true}]]"#).unwrap();
        assert_eq!((name, data), ("presence", r#"[{"userId":"a","online":true}]]"#));
        assert!(split_event(Transport::Socketio, "40{}").is_none());
    }

    #[test]
    fn the_view_follows_lists_then_changes() {
        let counts = Counts::default();
        let started = Instant::now();
        let mut view = View::new(Transport::Ws, vec!["b".into(), "c".into()]);
        view.on_frame(r#"{"event":"onlineUsers","data":["a","b"]}"#, &counts, started);
        assert_eq!((view.list_len, view.partner_online.clone()), (Some(2), vec![true, false]));
        view.on_frame(r#"{"event":"presenceMode","data":{"mode":"scoped"}}"#, &counts, started);
        view.on_frame(r#"{"event":"presence","data":[{"userId":"c","online":true}]}"#, &counts, started);
        assert!(view.complete(1000));
        view.on_frame(r#"{"event":"presence","data":[{"userId":"b","online":false}]}"#, &counts, started);
        assert!(!view.complete(1000));
        assert_eq!(counts.frames.load(Ordering::Relaxed), 4);
        assert_eq!(counts.presence.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_listening_socket_is_found_by_its_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1\n   1: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        assert_eq!(listening_inodes(table, 8080), ["12345"]);
        assert!(listening_inodes(table, 8081).is_empty());
    }
}
