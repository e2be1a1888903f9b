//! The test library every suite builds on: a fresh database per test on any backend
//! ([`TestDatabase`]), the server under test ([`TestApp`] in this process, [`ServerProcess`]
//! as a compiled binary, [`cluster::Cluster`] as several), and one client for all of them
//! ([`Api`]: a method per route, user helpers, typed [`Reply`], [`WsClient`]).
//!
//! The backend comes from `CHAT_TEST_BACKEND` (`sqlite`, the default, `postgres`,
//! `mongodb`, or `memory`: the in-memory reference store of the server under test). A backend that can't be reached fails the test with a message saying how to
//! start it: there are no silent skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use secrecy::SecretString;
use server::settings::{SqliteSynchronous, StorageSettings};

pub mod api;
pub mod app;
pub mod cluster;
pub mod process;
pub mod ws;

pub use api::{Api, Reply, TestUser, PASSWORD};
pub use app::TestApp;
pub use process::ServerProcess;
pub use ws::{WsClient, WsRefused, EVENT_TIMEOUT, QUIET_PERIOD};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mongodb,
    /// The in-memory reference store: nothing to create or remove, each server holds its own.
    Memory,
}

impl Backend {
    pub fn from_env() -> Self {
        match std::env::var("CHAT_TEST_BACKEND").as_deref() {
            Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
            Ok("postgres") => Backend::Postgres,
            Ok("mongodb") => Backend::Mongodb,
            Ok("memory") => Backend::Memory,
            Ok(other) => panic!("CHAT_TEST_BACKEND={other:?}: use sqlite, postgres, mongodb or memory"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mongodb => "mongodb",
            Backend::Memory => "memory",
        }
    }
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CHAT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The MongoDB server tests create their databases on.
pub fn mongodb_url() -> String {
    std::env::var("CHAT_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?retryWrites=false".into())
}

/// A database of its own for one test, removed by [`TestDatabase::remove`].
pub struct TestDatabase {
    pub backend: Backend,
    pub settings: StorageSettings,
    name: String,
    sqlite_dir: Option<std::path::PathBuf>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("creating a temporary folder");
                let settings = StorageSettings::Sqlite {
                    url: format!("sqlite://{}", dir.join("chat.db").display()),
                    max_connections: 8,
                    acquire_timeout_ms: 5000,
                    synchronous: SqliteSynchronous::Normal,
                };
                Self { backend, settings, name, sqlite_dir: Some(dir) }
            }
            Backend::Postgres => {
                let admin = postgres_admin().await;
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&admin)
                    .await
                    .expect("creating a PostgreSQL test database");
                admin.close().await;
                let url = postgres_url_for(&name);
                let settings = StorageSettings::Postgres {
                    url: SecretString::from(url),
                    max_connections: 10,
                    acquire_timeout_ms: 5000,
                    run_migrations: true,
                };
                Self { backend, settings, name, sqlite_dir: None }
            }
            Backend::Mongodb => {
                // MongoDB creates the database on its first write; this checks the server
                // answers, so that an unreachable one fails here with the remedy.
                mongodb_admin().await;
                let settings = StorageSettings::Mongodb {
                    url: SecretString::from(mongodb_url_for(&name)),
                    acquire_timeout_ms: 5000,
                };
                Self { backend, settings, name, sqlite_dir: None }
            }
            Backend::Memory => Self { backend, settings: StorageSettings::Memory {}, name, sqlite_dir: None },
        }
    }

    /// The database's own name (a fresh one per test).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn remove(self) {
        match self.backend {
            Backend::Sqlite => {
                if let Some(dir) = self.sqlite_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Backend::Postgres => {
                let admin = postgres_admin().await;
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
            Backend::Mongodb => {
                let admin = mongodb_admin().await;
                let _ = admin.database(&self.name).drop().await;
                admin.shutdown().await;
            }
            // The store goes with the server that holds it.
            Backend::Memory => {}
        }
    }

    /// [`TestDatabase::remove`] from a `Drop` impl, which can't await and may run inside the
    /// test's runtime (which can't be blocked on): on a runtime and a thread of its own.
    pub fn remove_blocking(self) {
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(self.remove()))
        })
        .join();
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A folder of its own under the system's temporary folder, removed when dropped (also when
/// the test fails).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh folder, `chat_{label}_` and a unique suffix.
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chat_{label}_{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("creating a temporary folder");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn postgres_admin() -> sqlx::PgPool {
    let url = postgres_admin_url();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {url} ({e}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 or point CHAT_TEST_POSTGRES_URL at a server"
            )
        })
}

fn postgres_url_for(database: &str) -> String {
    let admin = postgres_admin_url();
    let base = admin.split('?').next().unwrap_or(&admin);
    let server = base.rsplit_once('/').map(|(server, _)| server).unwrap_or(base);
    format!("{server}/{database}")
}

async fn mongodb_admin() -> mongodb::Client {
    let url = mongodb_url();
    let unreachable = |e: &dyn std::fmt::Display| -> ! {
        panic!(
            "MongoDB is not reachable at {url} ({e}). Start it with `scripts/start-mongodb.sh` \
             or point CHAT_TEST_MONGODB_URL at a server"
        )
    };
    let mut options = mongodb::options::ClientOptions::parse(&url).await.unwrap_or_else(|e| unreachable(&e));
    options.server_selection_timeout = Some(std::time::Duration::from_secs(3));
    let client = mongodb::Client::with_options(options).unwrap_or_else(|e| unreachable(&e));
    if let Err(e) = client.database("admin").run_command(mongodb::bson::doc! { "ping": 1 }).await {
        unreachable(&e);
    }
    client
}

/// [`mongodb_url`] with `database` as the URL's database, its options kept.
fn mongodb_url_for(database: &str) -> String {
    let url = mongodb_url();
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url.as_str(), None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("mongodb", base));
    let hosts = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(query) => format!("{scheme}://{hosts}/{database}?{query}"),
        None => format!("{scheme}://{hosts}/{database}"),
    }
}

/// The workspace folder (the parent of this crate).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The `server` executable for tests that run it as an operator would: `CHAT_SERVER_BIN`
/// when set, otherwise built once per test run by the cargo running the tests (so it is up
/// to date and in the same target folder and profile).
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("server", "CHAT_SERVER_BIN"))
}

/// The executable `name` of the workspace package of the same name: the one `env_var`
/// names when set (scripts/test.sh builds every target first and points there, so that no
/// test runs a cargo of its own), otherwise built by the cargo running the tests.
pub fn workspace_binary(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace_dir())
        .args(["build", "-p", name, "--bin", name, "--message-format=json-render-diagnostics"])
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let output = build.output().expect("cargo runs");
    assert!(output.status.success(), "`cargo build -p {name}` failed");
    // Cargo names the executable it built: no guessing at target folders.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .filter(|m| m["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin")))
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reports the {name} executable"))
}

/// `scripts/install-test-deps.sh` (the Node packages of `tests/js`), once per test binary
/// (the script itself is idempotent).
fn install_node_packages() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let status = Command::new("bash")
            .arg(workspace_dir().join("scripts/install-test-deps.sh"))
            .status()
            .expect("bash runs scripts/install-test-deps.sh");
        assert!(status.success(), "scripts/install-test-deps.sh failed: {status}");
    });
}

/// Runs a Node client of the server (`command`: `node` with its script and environment),
/// the Node packages of `tests/js` installed first, within a minute; fails with its output
/// unless it exits successfully having printed the line `ok_line`. Returns its stdout.
pub async fn run_node_client(mut command: tokio::process::Command, what: &str, ok_line: &str) -> String {
    install_node_packages();
    let run = command.kill_on_drop(true).output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
        .expect("node runs (Node 18+ must be installed)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.lines().any(|line| line == ok_line),
        "{what} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    stdout
}

/// The HS256 secret of in-process test servers.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The Redis fan-out on the Redis the tests share ([`cluster::system_redis_url`]), with key
/// and channel names starting with `prefix`: instances given the same prefix form a cluster.
pub fn shared_redis_fanout(prefix: &str) -> server::settings::FanoutSettings {
    server::settings::FanoutSettings::Redis {
        redis_url: SecretString::from(cluster::system_redis_url()),
        redis_tls: Default::default(),
        sentinel: None,
        prefix: prefix.to_owned(),
        presence_ttl: 15,
        stream_check_interval_ms: 5000,
    }
}

/// Two in-process instances on one new PostgreSQL database and the shared Redis, with key
/// and channel names starting with `prefix`, each with the test settings `adjust` changes;
/// returned once both are ready.
pub async fn two_instances(prefix: &str, adjust: impl Fn(&mut server::Settings)) -> (TestApp, TestApp) {
    let database = TestDatabase::create(Backend::Postgres).await;
    let settings = |database: &TestDatabase| {
        let mut settings = test_settings(database);
        settings.fanout = shared_redis_fanout(prefix);
        adjust(&mut settings);
        settings
    };
    let (first_settings, second_settings) = (settings(&database), settings(&database));
    // The second instance shares the database, which goes with the first.
    let first = TestApp::start(first_settings, Some(database)).await;
    let second = TestApp::start(second_settings, None).await;
    for app in [&first, &second] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app.api().get("/readyz", None).await.status != reqwest::StatusCode::OK {
            assert!(std::time::Instant::now() < deadline, "an instance is not ready (is Redis running?)");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    (first, second)
}

/// The test profile's settings on `database`: a free port on 127.0.0.1, two workers, a fixed
/// secret, cheap hashing, a quick stop. Suites adjust them in [`TestApp::spawn_with`].
pub fn test_settings(database: &TestDatabase) -> server::Settings {
    let mut settings =
        server::Settings::load_from(&workspace_dir().join("config"), server::settings::Environment::Test)
            .expect("the test configuration loads");
    settings.storage = database.settings.clone();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    // Two workers, so that requests of one client may land on either.
    settings.server.workers = 2;
    settings.server.shutdown_timeout = 1;
    settings.auth.jwt_secret = SecretString::from(JWT_SECRET);
    settings.auth.bcrypt_cost = 4;
    if std::env::var_os("TEST_LOG").is_some() {
        server::init_logging(&settings.log);
    }
    settings
}
