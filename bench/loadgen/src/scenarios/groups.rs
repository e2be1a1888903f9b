//! What the group scenarios share: a group of N registered members, and listeners that count
//! the deliveries of tagged messages on many sockets.
//!
//! Every message a group scenario sends carries `<tag><number> ` in its text, `tag` unique to
//! the run. A listener keeps `(number, seq, arrival time)` for each `newMessage` frame holding
//! the tag and does nothing else while the run lasts (no JSON decoding, no shared lock), so a
//! thousand sockets at tens of thousands of frames a second cost the load generator little;
//! latencies, losses and duplicates are worked out once the sockets are closed.
//!
//! A socket the server closes (as too slow, or when it cannot go on without a gap) is opened
//! again with `since` = the last cursor it received, as a client does: what it then never
//! receives is lost for good. Closes and resumptions are counted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{Api, User};
use crate::report::Latency;
use crate::socket::{self, Ended};
use crate::Target;

/// A group and its members; `members[0]` created it (its owner).
pub struct Group {
    pub id: String,
    pub members: Vec<User>,
}

/// Registers `size` users and puts them in one group: created with the first `batch` of
/// them, the rest added `batch` at a time (setup, not timed).
pub async fn setup_group(
    api: &Api,
    target: &Target,
    size: usize,
    batch: usize,
    prefix: &str,
) -> anyhow::Result<Group> {
    anyhow::ensure!(size >= 2, "a group has at least 2 members (asked for {size})");
    let members = api.register_many(prefix, size, &target.password, target.setup_concurrency).await?;
    let owner = &members[0];
    let others: Vec<String> = members[1..].iter().map(|u| u.id.clone()).collect();
    let batch = batch.max(1);
    let first = others.len().min(batch);
    let id = api.create_group(&owner.token, &format!("load {prefix}"), &others[..first]).await?;
    for chunk in others[first..].chunks(batch) {
        api.add_members(&owner.token, &id, chunk).await?;
    }
    eprintln!("  group {id} has {size} members");
    Ok(Group { id, members })
}

/// A unique tag for this run's message texts: `#<8 hex digits>:`.
pub fn run_tag() -> String {
    format!("#{:08x}:", rand::random::<u32>())
}

/// The number after `tag` and the `seq` field of a `newMessage` frame's raw text, when the
/// frame is one and carries the tag.
pub fn parse_frame(text: &str, tag: &str) -> Option<(u32, Option<u64>)> {
    if !text.contains("\"newMessage\"") {
        return None;
    }
    let after = &text[text.find(tag)? + tag.len()..];
    let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
    let number = after[..digits].parse().ok()?;
    Some((number, field_u64(text, "\"seq\":")))
}

/// The `cursor` string of a frame's raw text, if any.
pub fn frame_cursor(text: &str) -> Option<&str> {
    const KEY: &str = "\"cursor\":\"";
    let after = &text[text.find(KEY)? + KEY.len()..];
    after.find('"').map(|end| &after[..end])
}

/// The unsigned number right after `key` (e.g. `"seq":`) in a JSON text, if any.
fn field_u64(text: &str, key: &str) -> Option<u64> {
    let after = text[text.find(key)? + key.len()..].trim_start();
    let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
    after[..digits].parse().ok()
}

/// One tagged message arriving on one socket.
#[derive(Clone, Copy)]
struct Arrival {
    number: u32,
    seq: Option<u64>,
    at: Instant,
}

/// Sockets of some members, each recording the tagged messages it receives.
pub struct Listeners {
    tasks: Vec<JoinHandle<Listened>>,
    stop: watch::Sender<bool>,
    arrived: Arc<AtomicU64>,
    /// Handshakes refused at the start and tried again.
    retried: u64,
}

/// What one member's socket went through.
struct Listened {
    arrivals: Vec<Arrival>,
    /// Why the server closed it, each time it did.
    closes: Vec<String>,
    /// Times it was opened again with `since`.
    resumed: u64,
    /// Whether it was still open at the end.
    open_at_end: bool,
}

/// Times one socket is opened again after the server closed it.
const MOST_RESUMES: u64 = 5;

/// Connects one socket per user (`concurrency` handshakes at a time) and starts recording.
pub async fn listen(
    api: &Api,
    target: &Target,
    users: &[User],
    tag: &str,
    concurrency: usize,
) -> anyhow::Result<Listeners> {
    let timeout = Duration::from_secs_f64(target.timeout);
    let ws_base = api.ws_base();
    let retried = AtomicU64::new(0);
    let sockets = stream::iter(users)
        .map(|user| {
            let (ws_base, retried) = (&ws_base, &retried);
            async move {
                // Setup, not measured: a handshake refused while the server is busy (503 when
                // the store is slow to answer) is tried again, as a client would.
                let mut attempt = 0;
                loop {
                    match socket::connect(ws_base, target.transport, &user.token, timeout).await {
                        Ok(socket) => return Ok(socket),
                        Err(error) if attempt >= 5 => return Err(error),
                        Err(_) => {
                            attempt += 1;
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                    }
                }
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let retried = retried.into_inner();
    if retried > 0 {
        eprintln!("  {retried} socket handshakes were refused and tried again");
    }
    let (stop, stopped) = watch::channel(false);
    let arrived = Arc::new(AtomicU64::new(0));
    let tasks = sockets
        .into_iter()
        .zip(users)
        .map(|(socket, user)| {
            let (stopped, arrived, tag) = (stopped.clone(), arrived.clone(), tag.to_owned());
            let (ws_base, transport, token) = (ws_base.clone(), target.transport, user.token.clone());
            tokio::spawn(async move {
                let mut listened =
                    Listened { arrivals: Vec::new(), closes: Vec::new(), resumed: 0, open_at_end: false };
                let mut cursor = String::new();
                let mut socket = socket;
                loop {
                    let ended = socket
                        .run_raw(stopped.clone(), &tag, |text| {
                            if let Some((number, seq)) = parse_frame(text, &tag) {
                                listened.arrivals.push(Arrival { number, seq, at: Instant::now() });
                                arrived.fetch_add(1, Ordering::Relaxed);
                                if let Some(at) = frame_cursor(text) {
                                    cursor.clear();
                                    cursor.push_str(at);
                                }
                            }
                        })
                        .await;
                    let Ended::Lost(why) = ended else {
                        listened.open_at_end = true;
                        return listened;
                    };
                    listened.closes.push(why);
                    if *stopped.borrow() || listened.resumed >= MOST_RESUMES {
                        return listened;
                    }
                    let since = (!cursor.is_empty()).then_some(cursor.as_str());
                    match socket::resume(&ws_base, transport, &token, since, timeout).await {
                        Ok(again) => {
                            listened.resumed += 1;
                            socket = again;
                        }
                        Err(error) => {
                            listened.closes.push(format!("resuming failed: {error:#}"));
                            return listened;
                        }
                    }
                }
            })
        })
        .collect();
    Ok(Listeners { tasks, stop, arrived, retried })
}

impl Listeners {
    pub fn sockets(&self) -> usize {
        self.tasks.len()
    }

    /// Waits until `expected` tagged frames arrived in all, or `grace` passed.
    pub async fn wait_for(&self, expected: u64, grace: Duration) {
        let end = Instant::now() + grace;
        while self.arrived.load(Ordering::Relaxed) < expected && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes the sockets and checks what each received against `accepted` (message number
    /// → the moment its send began, for the sends answered 2xx).
    pub async fn finish(self, accepted: &HashMap<u32, Instant>) -> anyhow::Result<Deliveries> {
        let _ = self.stop.send(true);
        let mut out = Deliveries { handshakes_retried: self.retried, ..Deliveries::default() };
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        for task in self.tasks {
            let listened = task.await?;
            for why in &listened.closes {
                *reasons.entry(why.clone()).or_default() += 1;
            }
            out.closed_by_server += listened.closes.len() as u64;
            out.resumed += listened.resumed;
            out.sockets_lost += u64::from(!listened.open_at_end);
            out.add_socket(&listened.arrivals, accepted);
        }
        for (why, count) in reasons {
            eprintln!("  {count} × a listening socket ended: {why}");
        }
        Ok(out)
    }
}

/// What the listening sockets received, against what was sent.
#[derive(Default)]
pub struct Deliveries {
    /// Send began → arrival, for every first arrival of an accepted message.
    pub latency: Latency,
    pub delivered: u64,
    /// Accepted messages a socket never received.
    pub lost: u64,
    pub duplicated: u64,
    /// Arrivals whose `seq` is not above the previous arrival's on the same socket.
    pub out_of_order: u64,
    /// Messages received whose send was not answered 2xx (e.g. timed out but stored).
    pub unexpected: u64,
    /// Times the server closed a socket (each then resumed with `since`, at most 5 times).
    pub closed_by_server: u64,
    pub resumed: u64,
    /// Sockets not open at the end (closed and not resumed).
    pub sockets_lost: u64,
    /// Sockets that received none of the accepted messages.
    pub silent_sockets: u64,
    /// Handshakes refused while the sockets were opened (before sending), tried again.
    pub handshakes_retried: u64,
}

impl Deliveries {
    fn add_socket(&mut self, arrivals: &[Arrival], accepted: &HashMap<u32, Instant>) {
        let mut seen = HashSet::with_capacity(arrivals.len());
        let mut last_seq = None;
        let mut latencies = Vec::with_capacity(arrivals.len());
        for arrival in arrivals {
            if !seen.insert(arrival.number) {
                self.duplicated += 1;
                continue;
            }
            if let (Some(seq), Some(last)) = (arrival.seq, last_seq) {
                if seq <= last {
                    self.out_of_order += 1;
                }
            }
            last_seq = arrival.seq.or(last_seq);
            match accepted.get(&arrival.number) {
                Some(sent) => latencies.push(arrival.at.saturating_duration_since(*sent)),
                None => self.unexpected += 1,
            }
        }
        let received = latencies.len() as u64;
        for latency in latencies {
            self.latency.record(latency);
        }
        self.delivered += received;
        self.lost += accepted.len() as u64 - received;
        if received == 0 && !accepted.is_empty() {
            self.silent_sockets += 1;
        }
    }

    /// `{"latency": {…}, "delivered", "lost", …}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "latency": self.latency.json(),
            "delivered": self.delivered,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "out_of_order": self.out_of_order,
            "unexpected": self.unexpected,
            "closed_by_server": self.closed_by_server,
            "resumed": self.resumed,
            "sockets_lost": self.sockets_lost,
            "silent_sockets": self.silent_sockets,
            "handshakes_retried": self.handshakes_retried,
        })
    }

    /// Human lines and JSON fields (`delivery`, `delivered`, `lost`, …) of the report.
    pub fn add_to(&self, report: &mut crate::report::Report) {
        report
            .line(format!("delivery latency       {}", self.latency.human()))
            .line(format!(
                "delivered {}, lost {}, duplicated {}, out of order {}, unexpected {}; sockets closed by the \
                 server {} (resumed {}), lost {}, silent {}",
                self.delivered,
                self.lost,
                self.duplicated,
                self.out_of_order,
                self.unexpected,
                self.closed_by_server,
                self.resumed,
                self.sockets_lost,
                self.silent_sockets
            ))
            .field("delivery", self.latency.json())
            .field("delivered", self.delivered)
            .field("lost", self.lost)
            .field("duplicated", self.duplicated)
            .field("out_of_order", self.out_of_order)
            .field("unexpected", self.unexpected)
            .field("closed_by_server", self.closed_by_server)
            .field("resumed", self.resumed)
            .field("sockets_lost", self.sockets_lost)
            .field("silent_sockets", self.silent_sockets)
            .field("handshakes_retried", self.handshakes_retried);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_new_message_frame_yields_its_number_and_seq() {
        let frame = r##"{"event":"newMessage","data":{"_id":"m","conversationId":"g","receiverId":null,
            "message":"#0badcafe:17 fanout load message","seq":42,"kind":"text","cursor":"3~g.42"}}"##;
        assert_eq!(parse_frame(frame, "#0badcafe:"), Some((17, Some(42))));
        let socketio = r##"42["newMessage",{"message":"#0badcafe:3 x","seq": 7}]"##;
        assert_eq!(parse_frame(socketio, "#0badcafe:"), Some((3, Some(7))));
    }

    #[test]
    fn the_cursor_of_a_frame_is_read_as_sent() {
        let frame =
            r##"{"event":"newMessage","data":{"message":"#0badcafe:1 x","seq":4,"cursor":"3~01a2-b.4"}}"##;
        assert_eq!(frame_cursor(frame), Some("3~01a2-b.4"));
        assert_eq!(frame_cursor(r#"{"event":"newMessage","data":{}}"#), None);
    }

    #[test]
    fn other_frames_and_other_runs_are_ignored() {
        let other_run = r##"{"event":"newMessage","data":{"message":"#11111111:17 x","seq":1}}"##;
        assert_eq!(parse_frame(other_run, "#0badcafe:"), None);
        let other_event = r##"{"event":"conversationUpdated","data":{"name":"#0badcafe:1"}}"##;
        assert_eq!(parse_frame(other_event, "#0badcafe:"), None);
        let no_seq = r##"{"event":"newMessage","data":{"message":"#0badcafe:5 x"}}"##;
        assert_eq!(parse_frame(no_seq, "#0badcafe:"), Some((5, None)));
    }

    fn arrival(number: u32, seq: u64, at: Instant) -> Arrival {
        Arrival { number, seq: Some(seq), at }
    }

    #[test]
    fn losses_duplicates_order_and_strays_are_counted_per_socket() {
        let t0 = Instant::now();
        let accepted: HashMap<u32, Instant> = (0..4).map(|n| (n, t0)).collect();
        let later = t0 + Duration::from_millis(5);
        let mut deliveries = Deliveries::default();
        // Socket 1: 0, 2, 1 (out of order by seq), 2 again, 9 (never accepted); 3 lost.
        deliveries.add_socket(
            &[arrival(0, 1, later), arrival(2, 3, later), arrival(1, 2, later), arrival(2, 3, later)]
                .into_iter()
                .chain([arrival(9, 4, later)])
                .collect::<Vec<_>>(),
            &accepted,
        );
        // Socket 2: nothing.
        deliveries.add_socket(&[], &accepted);
        assert_eq!(deliveries.delivered, 3);
        assert_eq!(deliveries.lost, 1 + 4);
        assert_eq!(deliveries.duplicated, 1);
        assert_eq!(deliveries.out_of_order, 1);
        assert_eq!(deliveries.unexpected, 1);
        assert_eq!(deliveries.silent_sockets, 1);
        assert_eq!(deliveries.latency.count(), 3);
    }
}
