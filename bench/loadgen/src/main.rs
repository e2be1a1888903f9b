//! `loadgen`: drives a chat server that implements docs/API.md (REST plus the native `/ws`
//! endpoint or Socket.IO) and reports throughput and latency. It works against this
//! project's server on every backend and against the original Express/Socket.IO app.
//!
//! Every scenario registers its users first (not timed), runs for a bounded time or count,
//! then prints a human summary followed by one JSON line (the last line of stdout).
//! Targets are restricted to the loopback interface.

mod api;
mod report;
mod scenarios;
mod socket;

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for the chat API (docs/API.md)")]
struct Cli {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
pub struct Target {
    /// Base URL of the server; only loopback addresses are accepted.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Real-time endpoint to listen on.
    #[arg(long, global = true, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Password of every user the run registers.
    #[arg(long, global = true, default_value = "loadgen-password")]
    pub password: String,
    /// Per-request timeout, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub timeout: f64,
    /// Concurrent registrations during setup.
    #[arg(long, global = true, default_value_t = 8)]
    pub setup_concurrency: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Transport {
    /// Native WebSocket, JSON frames `{"event","data"}` at `/ws`.
    Ws,
    /// Engine.IO v4 / Socket.IO v5 over a WebSocket at `/socket.io/`.
    Socketio,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Socketio => "socketio",
        }
    }
}

#[derive(Subcommand)]
enum Scenario {
    /// N sender/receiver pairs: accepted sends/s, HTTP and delivery latency, losses.
    Send(scenarios::send::SendArgs),
    /// Pages of 50 messages per second from a seeded conversation.
    History(scenarios::history::HistoryArgs),
    /// Logins per second while a prober measures GET get-profile latency.
    Login(scenarios::login::LoginArgs),
    /// K idle sockets: connections/s, server RSS per connection, delivery on live pairs.
    Connect(scenarios::connect::ConnectArgs),
    /// The ceiling for logins: cores divided by the time of one bcrypt hash.
    BcryptBaseline(scenarios::login::BaselineArgs),
    /// 1:1 sends/s and sends/s into a group of N members at the same concurrency; the ratio.
    GroupSend(scenarios::group_send::GroupSendArgs),
    /// A group of N members all online, messages at a fixed rate: per-delivery latency, losses.
    GroupFanout(scenarios::group_fanout::GroupFanoutArgs),
    /// Pages of a 10,000-conversation list: page and walk times, exact unread counts.
    UnreadList(scenarios::unread_list::UnreadListArgs),
    /// N members of one group: reactions/s on one hot message, edits/s and sends/s, the
    /// ratios, and the hot message's exact reaction count.
    Changes(scenarios::changes::ChangesArgs),
    /// K sockets on one instance, a steady send rate, Redis stopped for a while: the time to
    /// heal every socket once it is back, losses and duplicates, and the healing's store reads.
    Outage(scenarios::outage::OutageArgs),
    /// N distinct users connect within a second, one socket each: every frame they receive
    /// (by event) and the server's CPU time, in whichever presence mode the server is in.
    PresenceStorm(scenarios::presence_storm::PresenceStormArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    check_loopback(&cli.target.url)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let report = runtime.block_on(async move {
        let target = cli.target;
        match cli.scenario {
            Scenario::Send(args) => scenarios::send::run(&target, args).await,
            Scenario::History(args) => scenarios::history::run(&target, args).await,
            Scenario::Login(args) => scenarios::login::run(&target, args).await,
            Scenario::Connect(args) => scenarios::connect::run(&target, args).await,
            Scenario::BcryptBaseline(args) => scenarios::login::baseline(args).await,
            Scenario::GroupSend(args) => scenarios::group_send::run(&target, args).await,
            Scenario::GroupFanout(args) => scenarios::group_fanout::run(&target, args).await,
            Scenario::UnreadList(args) => scenarios::unread_list::run(&target, args).await,
            Scenario::Changes(args) => scenarios::changes::run(&target, args).await,
            Scenario::Outage(args) => scenarios::outage::run(&target, args).await,
            Scenario::PresenceStorm(args) => scenarios::presence_storm::run(&target, args).await,
        }
    })?;
    report.print();
    // Idle sockets and pooled connections are dropped with the runtime; don't wait on them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// The load generator only ever talks to this machine.
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").context("--url must start with http:// (loopback only)")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if !matches!(host, "127.0.0.1" | "localhost" | "::1") {
        bail!("--url host {host:?} is not a loopback address (127.0.0.1, localhost, ::1)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn only_loopback_targets_are_accepted() {
        assert!(check_loopback("http://127.0.0.1:8080").is_ok());
        assert!(check_loopback("http://localhost:9000/").is_ok());
        assert!(check_loopback("http://[::1]:8080").is_ok());
        assert!(check_loopback("http://example.com").is_err());
        assert!(check_loopback("http://10.0.0.1:8080").is_err());
        assert!(check_loopback("https://127.0.0.1").is_err());
    }
}
