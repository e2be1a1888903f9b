//! Redis as operators run it: TLS with a CA of the deployment (and a client certificate),
//! an ACL user with only the permissions the fan-out needs, a primary behind Sentinel that
//! fails over while events flow, and a Redis Cluster node refused at start.
//!
//! Every Redis here is a `redis-server` process started by the test on free ports, in a
//! folder of its own, killed and removed when the test ends, however it ends. The TLS
//! certificates are made by the `openssl` command. A missing `redis-server` or `openssl`
//! fails the tests: there are no silent skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use application::ports::{
    Event, HealthCheck as _, Notifier as _, Presence as _, Revocation, RevocationFeed as _,
    RevocationListener,
};
use chat_realtime::{
    ConnectionGuard, ConnectionRegistry, Delivery, GroupMembers, Queued, Receiver, SessionToken,
};
use chat_redis::{FanoutOptions, RedisFanout, SentinelOptions, TlsFiles};
use domain::{ConversationId, Cursor, Message, MessageBody, MessageId, UserId};

const TIMEOUT: Duration = Duration::from_secs(15);

/// Processes and files of one test, gone when it is dropped (a failed assertion included).
struct Scratch {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat-redis-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir, children: Vec::new() }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Starts `redis-server` with `args`; its output goes to a log file in the folder.
    fn redis_server(&mut self, args: &[&str]) -> usize {
        let log = std::fs::File::create(self.path(&format!("server-{}.log", self.children.len()))).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server must be installed for these tests (apt-get install redis-server)");
        self.children.push(child);
        self.children.len() - 1
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl must be installed for the TLS test");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A CA (`{name}-ca.pem`), and a certificate it signs for each of `leaves`
    /// (`{leaf}.pem` and `{leaf}.key`), valid for 127.0.0.1 and localhost.
    fn certificates(&self, name: &str, leaves: &[&str]) {
        let ca = format!("{name}-ca");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        let (ca_key, ca_pem, subject) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN={ca}"));
        args.extend(["-keyout", &ca_key, "-out", &ca_pem, "-days", "2", "-subj", &subject]);
        self.openssl(&args);
        std::fs::write(self.path("leaf.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        for leaf in leaves {
            let (key, csr, pem, subject) =
                (format!("{leaf}.key"), format!("{leaf}.csr"), format!("{leaf}.pem"), format!("/CN={leaf}"));
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
            self.openssl(&args);
            self.openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                "leaf.ext",
            ]);
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An administrative connection to the test's own Redis, once it answers.
async fn admin(url: &str) -> redis::aio::MultiplexedConnection {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let attempt = async {
            let mut connection = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut connection).await?;
            redis::RedisResult::Ok(connection)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Ok(connection)) => return connection,
            outcome if Instant::now() > deadline => panic!("{url} never answered: {outcome:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn query<T: redis::FromRedisValue>(
    connection: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(connection).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn until(what: &str, check: impl AsyncFnMut() -> bool) {
    until_within(TIMEOUT, what, check).await
}

async fn until_within(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn options(url: &str, tls: TlsFiles, sentinel: Option<SentinelOptions>, prefix: &str) -> FanoutOptions {
    FanoutOptions {
        url: url.into(),
        tls,
        sentinel,
        prefix: prefix.into(),
        presence_ttl: Duration::from_secs(3),
    }
}

/// When the instance's subscription went live or was lost.
#[derive(Default)]
struct Feed(Mutex<Vec<(Instant, bool)>>);

impl RevocationListener for Feed {
    fn revoked_elsewhere(&self, _: Revocation) {}
    fn feed_live(&self) {
        self.0.lock().unwrap().push((Instant::now(), true));
    }
    fn feed_lost(&self) {
        self.0.lock().unwrap().push((Instant::now(), false));
    }
}

/// One server instance's fan-out, with a registry to connect users to.
struct Node {
    fanout: Arc<RedisFanout>,
    registry: Arc<ConnectionRegistry>,
    feed: Arc<Feed>,
}

impl Node {
    async fn start(options: FanoutOptions) -> Self {
        let registry = ConnectionRegistry::new(4096, 0);
        let groups = Arc::new(application::ports::MockGroupRepository::new());
        let delivery = Delivery::new(registry.clone(), GroupMembers::new(groups));
        let fanout = RedisFanout::start(options, delivery).unwrap();
        fanout.check_endpoint(Duration::from_secs(5)).await.expect("the endpoint is accepted");
        let feed = Arc::new(Feed::default());
        fanout.listen(feed.clone());
        let node = Self { fanout, registry, feed };
        node.ready().await;
        node
    }

    async fn ready(&self) {
        until("the fan-out is ready", async || self.fanout.ping().await.is_ok()).await;
    }

    fn connect(&self, user: &UserId) -> (ConnectionGuard, Receiver) {
        let token = SessionToken {
            id: UserId::generate().to_string(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        };
        self.registry.register(user, &token).unwrap()
    }

    /// Publishes event number `n` for `to` (its message's seq is `n`).
    async fn send(&self, to: &UserId, n: u64) -> bool {
        let message = Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: Some(to.clone()),
            body: MessageBody::parse("numbered").unwrap(),
            system: None,
            seq: n,
            created_at: chrono::Utc::now(),
            client_id: None,
        };
        let event = Event::NewMessage { message, cursor: Cursor::new(n + 1).unwrap() };
        self.fanout.notify(std::slice::from_ref(to), &event).await.is_ok()
    }
}

/// The number of the next event that reaches `rx`, if one does within `within`.
async fn received(rx: &mut Receiver, within: Duration) -> Option<u64> {
    loop {
        match tokio::time::timeout(within, rx.recv()).await.ok()?? {
            Queued::Stream(streamed) => match &streamed.event {
                Event::NewMessage { message, .. } => return Some(message.seq),
                _ => continue,
            },
            Queued::Frame(_) | Queued::CatchUp(_) => continue,
        }
    }
}

async fn round_trip(from: &Node, to: &Node) {
    let user = UserId::generate();
    let (_guard, mut rx) = to.connect(&user);
    for n in 0..3 {
        assert!(from.send(&user, n).await, "event {n} accepted");
        assert_eq!(received(&mut rx, TIMEOUT).await, Some(n), "event {n} crossed instances");
    }
}

/// What the first contact with `options` says, expecting a refusal.
async fn start_error(options: FanoutOptions) -> String {
    let registry = ConnectionRegistry::new(4, 0);
    let groups = Arc::new(application::ports::MockGroupRepository::new());
    let delivery = Delivery::new(registry, GroupMembers::new(groups));
    let fanout = RedisFanout::start(options, delivery).unwrap();
    match fanout.check_endpoint(Duration::from_secs(5)).await {
        Ok(()) => panic!("the endpoint was accepted"),
        Err(error) => format!("{error:#}"),
    }
}

fn file(dir: &Path, name: &str) -> Option<PathBuf> {
    Some(dir.join(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_events_cross_instances_and_a_wrong_ca_or_a_missing_client_certificate_is_refused() {
    let mut scratch = Scratch::new("tls");
    scratch.certificates("deployment", &["server", "client"]);
    scratch.certificates("other", &[]);
    let port = free_port().to_string();
    scratch.redis_server(&[
        "--port",
        "0",
        "--tls-port",
        &port,
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        "server.pem",
        "--tls-key-file",
        "server.key",
        "--tls-ca-cert-file",
        "deployment-ca.pem",
        "--tls-auth-clients",
        "yes",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{port}");
    let dir = scratch.dir.clone();
    let trusted = TlsFiles {
        ca_file: file(&dir, "deployment-ca.pem"),
        client_cert_file: file(&dir, "client.pem"),
        client_key_file: file(&dir, "client.key"),
    };
    // The server answers once its port is open: wait with the right files.
    until("the TLS server answers", async || {
        let client = redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: std::fs::read(dir.join("client.pem")).unwrap(),
                    client_key: std::fs::read(dir.join("client.key")).unwrap(),
                }),
                root_cert: Some(std::fs::read(dir.join("deployment-ca.pem")).unwrap()),
            },
        )
        .unwrap();
        client.get_multiplexed_async_connection().await.is_ok()
    })
    .await;

    let prefix = "tls-test";
    let a = Node::start(options(&url, trusted.clone(), None, prefix)).await;
    let b = Node::start(options(&url, trusted.clone(), None, prefix)).await;
    round_trip(&a, &b).await;

    let wrong_ca = TlsFiles { ca_file: file(&dir, "other-ca.pem"), ..trusted.clone() };
    let error = start_error(options(&url, wrong_ca, None, prefix)).await;
    assert!(
        error.contains("fanout.redis_tls.ca_file")
            && error.contains("not trusted")
            && error.contains("other-ca.pem"),
        "{error}"
    );

    let no_client_certificate = TlsFiles { ca_file: trusted.ca_file.clone(), ..TlsFiles::default() };
    let error = start_error(options(&url, no_client_certificate, None, prefix)).await;
    assert!(error.contains("TLS handshake") && error.contains("client_cert_file"), "{error}");
}

/// The ACL the fan-out needs, as docs/SCALING.md lists it.
fn acl_rules(prefix: &str) -> Vec<String> {
    let mut rules: Vec<String> =
        ["on", ">s3cret-pw", "resetkeys", "resetchannels", "-@all"].map(String::from).into();
    rules.push(format!("~{prefix}:*"));
    rules.push(format!("&{prefix}:*"));
    for command in [
        "ping",
        "publish",
        "subscribe",
        "hset",
        "hdel",
        "del",
        "pexpire",
        "sadd",
        "smembers",
        "hkeys",
        "hmget",
        "multi",
        "exec",
        "evalsha",
        "script|load",
        "exists",
        "srem",
        "info",
    ] {
        rules.push(format!("+{command}"));
    }
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_only_the_documented_permissions_runs_the_fan_out_and_a_wrong_password_is_refused() {
    let mut scratch = Scratch::new("acl");
    let port = free_port().to_string();
    scratch.redis_server(&["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut admin = admin(&format!("redis://127.0.0.1:{port}")).await;
    let prefix = "acl-test";
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg("chat").arg(acl_rules(prefix));
    let () = setuser.query_async(&mut admin).await.unwrap();

    let url = format!("redis://chat:s3cret-pw@127.0.0.1:{port}");
    let a = Node::start(options(&url, TlsFiles::default(), None, prefix)).await;
    let b = Node::start(options(&url, TlsFiles::default(), None, prefix)).await;
    // Someone online on each, so that the presence writes and the sweep have work to do.
    let (on_a, on_b) = (UserId::generate(), UserId::generate());
    a.fanout.connected(&on_a).await.unwrap();
    b.fanout.connected(&on_b).await.unwrap();
    round_trip(&a, &b).await;
    // A few heartbeats (a second each): writes, sweeps and the script all ran.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let denied: Vec<redis::Value> = query(&mut admin, &["ACL", "LOG"]).await;
    assert!(denied.is_empty(), "the fan-out needed a permission the ACL does not give: {denied:?}");
    let instances: Vec<String> = query(&mut admin, &["SMEMBERS", &format!("{prefix}:instances")]).await;
    for node in [&a, &b] {
        assert!(instances.contains(&node.fanout.instance().to_owned()), "presence written: {instances:?}");
    }
    let mut online = a.fanout.online().await.unwrap();
    online.sort();
    let mut expected = vec![on_a, on_b];
    expected.sort();
    assert_eq!(online, expected, "each instance reads the other's presence");

    let wrong = format!("redis://chat:not-the-password@127.0.0.1:{port}");
    let error = start_error(options(&wrong, TlsFiles::default(), None, prefix)).await;
    assert!(error.contains("fanout.redis_url") && error.contains("user name or password"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_node_is_refused_at_start() {
    let mut scratch = Scratch::new("cluster");
    let port = free_port().to_string();
    scratch.redis_server(&[
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let url = format!("redis://127.0.0.1:{port}");
    admin(&url).await;
    let error = start_error(options(&url, TlsFiles::default(), None, "cluster-test")).await;
    assert!(error.contains("Redis Cluster is not supported"), "{error}");
}

/// What the publisher did with one numbered event.
struct Sent {
    n: u64,
    started: Instant,
    accepted: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_delivery_follows_a_failover_without_a_restart_and_loses_nothing_accepted_outside_it()
{
    let mut scratch = Scratch::new("sentinel");
    let (primary, replica) = (free_port(), free_port());
    let base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    let (p, r) = (primary.to_string(), replica.to_string());
    // The replica's first sync starts at once, not after the default 5 s gathering delay.
    let mut args = vec!["--port", p.as_str(), "--repl-diskless-sync-delay", "0"];
    args.extend(base);
    scratch.redis_server(&args);
    let mut args = vec!["--port", r.as_str(), "--replicaof", "127.0.0.1", p.as_str()];
    args.extend(base);
    scratch.redis_server(&args);
    let mut replica_admin = admin(&format!("redis://127.0.0.1:{replica}")).await;
    until_within(Duration::from_secs(60), "the replica is in sync", async || {
        let info: String = query(&mut replica_admin, &["INFO", "replication"]).await;
        info.contains("master_link_status:up")
    })
    .await;

    let sentinels: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, port) in sentinels.iter().enumerate() {
        let conf = format!("sentinel-{i}.conf");
        std::fs::write(
            scratch.path(&conf),
            format!(
                "port {port}\nbind 127.0.0.1\nsentinel monitor chat 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds chat 1000\nsentinel failover-timeout chat 5000\n"
            ),
        )
        .unwrap();
        let conf = scratch.path(&conf);
        scratch.redis_server(&[conf.to_str().unwrap(), "--sentinel"]);
    }
    let mut sentinel = admin(&format!("redis://127.0.0.1:{}", sentinels[0])).await;
    until("the sentinels know the replica", async || {
        let replicas: Vec<std::collections::HashMap<String, String>> =
            query(&mut sentinel, &["SENTINEL", "REPLICAS", "chat"]).await;
        replicas.iter().any(|r| {
            r.get("flags").is_some_and(|f| f == "slave")
                && r.get("master-link-status").is_some_and(|s| s == "ok")
        })
    })
    .await;

    let sentinel_options = SentinelOptions {
        master_name: "chat".into(),
        addresses: sentinels.iter().map(|port| format!("127.0.0.1:{port}")).collect(),
        username: None,
        password: None,
        tls: false,
    };
    // The URL's host and port are not used behind Sentinel.
    let url = "redis://unused:1";
    let prefix = "sentinel-test";
    let a = Arc::new(
        Node::start(options(url, TlsFiles::default(), Some(sentinel_options.clone()), prefix)).await,
    );
    let b = Node::start(options(url, TlsFiles::default(), Some(sentinel_options), prefix)).await;
    let user = UserId::generate();
    let (_guard, mut rx) = b.connect(&user);

    // Numbered events from `a` every 10 ms, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = tokio::spawn({
        let (a, user, stop) = (a.clone(), user.clone(), stop.clone());
        async move {
            let mut sent = Vec::new();
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let accepted = a.send(&user, n).await;
                sent.push(Sent { n, started, accepted });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent
        }
    });
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(n) = received(&mut rx, Duration::from_secs(3)).await {
            got.push(n);
        }
        got
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let failover_started = Instant::now();
    until("the sentinel starts the failover", async || {
        let answer: redis::RedisResult<String> =
            redis::cmd("SENTINEL").arg("FAILOVER").arg("chat").query_async(&mut sentinel).await;
        answer.is_ok()
    })
    .await;
    let new_primary = replica.to_string();
    until("the sentinels name the replica as primary", async || {
        let address: Vec<String> =
            query(&mut sentinel, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "chat"]).await;
        address.get(1) == Some(&new_primary)
    })
    .await;
    // A connection of its own each time: Sentinel closes the clients of the demoted primary.
    let old_primary = format!("redis://127.0.0.1:{primary}");
    // Sentinel notices the old primary at its next look at it (every 10 s) and demotes it.
    until_within(Duration::from_secs(30), "the old primary is a replica", async || {
        let info: String = query(&mut admin(&old_primary).await, &["INFO", "replication"]).await;
        info.contains("role:slave")
    })
    .await;
    a.ready().await;
    b.ready().await;
    let settled = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    let got = receiver.await.unwrap();

    // The switchover ends when both instances are ready and neither subscription moved since.
    let last_change = |feed: &Feed| feed.0.lock().unwrap().iter().map(|(at, _)| *at).max();
    let window_end =
        [Some(settled), last_change(&a.feed), last_change(&b.feed)].into_iter().flatten().max().unwrap();
    let mut sorted = got.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), got.len(), "no event twice");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    let outside: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.accepted && (s.started < failover_started || s.started > window_end))
        .collect();
    let after = outside.iter().filter(|s| s.started > window_end).count();
    assert!(after >= 50, "delivery continued after the failover ({after} events)");
    let missing: Vec<u64> = outside.iter().map(|s| s.n).filter(|n| got.binary_search(n).is_err()).collect();
    let within: Vec<&Sent> =
        sent.iter().filter(|s| s.started >= failover_started && s.started <= window_end).collect();
    let refused = within.iter().filter(|s| !s.accepted).count();
    let lost = within.iter().filter(|s| s.accepted && got.binary_search(&s.n).is_err()).count();
    println!(
        "{} events sent, {} received; switchover {:?}: {} published in it, {refused} refused, {lost} accepted and not delivered",
        sent.len(),
        got.len(),
        window_end - failover_started,
        within.len(),
    );
    assert!(missing.is_empty(), "accepted outside the switchover and never delivered: {missing:?}");
}
