//! Several `server` processes sharing one fresh database and one Redis, as behind a load
//! balancer: the compiled binary ([`crate::server_binary`]), configured through `CHAT__*`
//! variables, each instance logging to a file of its own.
//!
//! What every instance gets is set here; what a suite wants on top (its secret, workers, log
//! level, presence expiry, …) comes in [`ClusterConfig::env`].

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use secrecy::ExposeSecret as _;
use server::settings::StorageSettings;
use tokio::time::Instant;

use crate::api::Api;
use crate::{free_port, server_binary, workspace_dir, Backend, TestDatabase};

/// How long an instance (or a test's own `redis-server`) may take to start and report ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The Redis the tests share: `CHAT_TEST_REDIS_URL`, by default `redis://127.0.0.1:6379`.
pub fn system_redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether something answers Redis's `PING` at `redis_url` (`redis://host:port`).
pub fn redis_answers(redis_url: &str) -> bool {
    let address = redis_url.trim_start_matches("redis://").trim_end_matches('/');
    let Ok(addr) = address.parse() else {
        return false;
    };
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// One `server` process; killed when dropped, whatever the test's outcome.
pub struct Instance {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the instance gets no chance to clean up after itself.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last 30 lines of the instance's log.
    pub fn log_tail(&self) -> String {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return String::new();
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a suite's cluster runs on and with.
pub struct ClusterConfig<'a> {
    /// The backend of the fresh database the instances share.
    pub backend: Backend,
    /// The Redis of the fan-out.
    pub redis_url: String,
    /// The start of the cluster's Redis key prefix (made unique per cluster, as tests running
    /// at the same time share the Redis) and of its logs folder's name.
    pub prefix: &'a str,
    /// The timeout of [`Cluster::http`]'s requests, readiness probes included.
    pub request_timeout: Duration,
    /// The suite's settings of every instance, on top of the shared ones (server address,
    /// storage, fan-out): `CHAT__AUTH__JWT_SECRET`, `CHAT__SERVER__WORKERS`, ….
    pub env: &'a [(&'a str, &'a str)],
}

/// The running instances, their database and their logs: killed, removed and removed (or
/// kept for reading, after a failure) by [`Cluster::stop`] or when dropped.
pub struct Cluster {
    pub instances: Vec<Instance>,
    /// A client for the instances, with [`ClusterConfig::request_timeout`].
    pub http: reqwest::Client,
    database: Option<TestDatabase>,
    logs: PathBuf,
}

impl Cluster {
    /// `size` instances on one fresh database and the Redis of `config`, each ready (storage
    /// and bus) when this returns.
    pub async fn start(config: ClusterConfig<'_>, size: usize) -> Self {
        let binary = server_binary().to_owned();
        let redis_url = &config.redis_url;
        assert!(
            redis_answers(redis_url),
            "Redis is not reachable at {redis_url}: start it (`redis-server --daemonize yes`) or set CHAT_TEST_REDIS_URL"
        );
        let database = TestDatabase::create(config.backend).await;
        let storage_url = match &database.settings {
            StorageSettings::Sqlite { url, .. } => url.clone(),
            StorageSettings::Postgres { url, .. } | StorageSettings::Mongodb { url, .. } => {
                url.expose_secret().to_owned()
            }
            StorageSettings::Memory {} => {
                panic!("a cluster shares one store; each memory store lives in one instance")
            }
        };
        let prefix = format!("{}-{}", config.prefix, uuid::Uuid::new_v4().simple());
        let logs = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&logs).expect("a folder for the instances' logs");
        let shared = [
            ("CHAT__SERVER__HOST", "127.0.0.1"),
            ("CHAT__SERVER__SHUTDOWN_TIMEOUT", "1"),
            ("CHAT__STORAGE__BACKEND", database.backend.name()),
            ("CHAT__STORAGE__URL", &storage_url),
            ("CHAT__STORAGE__MAX_CONNECTIONS", "4"),
            ("CHAT__FANOUT__BACKEND", "redis"),
            ("CHAT__FANOUT__REDIS_URL", redis_url),
            ("CHAT__FANOUT__PREFIX", &prefix),
        ];
        let mut cluster = Self {
            instances: Vec::new(),
            http: reqwest::Client::builder().timeout(config.request_timeout).build().expect("an HTTP client"),
            database: Some(database),
            logs,
        };
        // One after the other: the first applies the migrations.
        for number in 1..=size {
            let port = free_port();
            let port_text = port.to_string();
            let env = [("CHAT__SERVER__PORT", port_text.as_str())];
            let env = env.iter().chain(&shared).chain(config.env).copied();
            let log = cluster.logs.join(format!("instance-{number}.log"));
            let instance = spawn(&binary, port, log, env);
            cluster.instances.push(instance);
            cluster.wait_started(number - 1).await;
        }
        cluster
    }

    /// Waits for instance `index` to report ready; fails at once if it exits.
    async fn wait_started(&mut self, index: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ready(index).await {
                return;
            }
            let instance = &mut self.instances[index];
            if let Some(Ok(Some(status))) = instance.child.as_mut().map(Child::try_wait) {
                panic!("instance {} exited ({status}):\n{}", index + 1, instance.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "instance {} is not ready after {START_TIMEOUT:?}:\n{}",
                index + 1,
                instance.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client of instance `index`, with [`ClusterConfig::request_timeout`].
    pub fn api(&self, index: usize) -> Api {
        Api::with_client(self.instances[index].port, self.http.clone())
    }

    /// Whether instance `index`'s `/readyz` answers 200.
    pub async fn ready(&self, index: usize) -> bool {
        let url = self.instances[index].url("/readyz");
        matches!(self.http.get(url).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK)
    }

    /// Polls `/readyz` of instance `index` until it says `ready` (or not), up to the deadline.
    pub async fn wait_readiness(&self, index: usize, ready: bool, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ready(index).await != ready {
            assert!(
                Instant::now() < deadline,
                "instance {} did not become {} within {within:?}:\n{}",
                index + 1,
                if ready { "ready" } else { "unready" },
                self.instances[index].log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of instance `index`.
    pub fn kill(&mut self, index: usize) {
        self.instances[index].kill();
    }

    /// Kills the instances, removes the database and the logs.
    pub async fn stop(&mut self) {
        for instance in &mut self.instances {
            instance.kill();
        }
        if let Some(database) = self.database.take() {
            database.remove().await;
        }
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

impl Drop for Cluster {
    /// After a failure: the processes are killed and the database dropped all the same;
    /// the logs stay for reading.
    fn drop(&mut self) {
        let Some(database) = self.database.take() else {
            return;
        };
        for instance in &mut self.instances {
            instance.kill();
        }
        database.remove_blocking();
        eprintln!("instance logs kept in {}", self.logs.display());
    }
}

/// Starts `binary` on `port` in the workspace with `env` (and the test profile), its output
/// to `log`.
fn spawn<'a>(
    binary: &Path,
    port: u16,
    log: PathBuf,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Instance {
    let output = std::fs::File::create(&log).expect("a log file");
    let child = Command::new(binary)
        .current_dir(workspace_dir())
        .env_remove("RUST_LOG")
        .env("APP_ENV", "test")
        .env("CHAT_CONFIG_DIR", workspace_dir().join("config"))
        .envs(env)
        .stdout(output.try_clone().expect("a second handle on the log"))
        .stderr(output)
        .spawn()
        .expect("the server binary starts");
    Instance { port, child: Some(child), log }
}
