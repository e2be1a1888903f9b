//! Configuration: built-in defaults, then `config/default.toml`, then `config/{env}.toml`,
//! then `CHAT__SECTION__KEY` environment variables; later layers win.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The defaults, compiled in so that the binary runs from any folder.
const DEFAULTS: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Test,
    Production,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Production => "production",
        }
    }

    fn from_env() -> anyhow::Result<Self> {
        let raw = std::env::var("APP_ENV")
            .or_else(|_| std::env::var("CHAT_ENV"))
            .unwrap_or_else(|_| "development".into());
        match raw.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "test" => Ok(Self::Test),
            "production" | "prod" => Ok(Self::Production),
            other => anyhow::bail!(
                "unknown environment {other:?} in APP_ENV/CHAT_ENV: use development, test or production"
            ),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    #[serde(skip, default = "default_environment")]
    pub environment: Environment,
    pub server: ServerSettings,
    pub storage: StorageSettings,
    pub auth: AuthSettings,
    pub cookie: CookieSettings,
    pub cors: CorsSettings,
    pub http: HttpLimits,
    pub websocket: WebSocketSettings,
    pub limits: LimitSettings,
    pub socketio: SocketIoSettings,
    pub fanout: FanoutSettings,
    pub log: LogSettings,
    pub web: WebSettings,
    pub metrics: MetricsSettings,
    pub groups: GroupSettings,
    #[serde(default)]
    pub presence: PresenceSettings,
    #[serde(default)]
    pub messages: MessageSettings,
}

fn default_environment() -> Environment {
    Environment::Development
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    pub shutdown_timeout: u64,
    /// Open connections the instance holds at most (within the open files limit).
    pub max_connections: usize,
    /// Open connections one client address may hold; 0: no cap.
    pub max_connections_per_address: usize,
}

/// Which store, with only the fields that store understands.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum StorageSettings {
    Sqlite {
        url: String,
        max_connections: u32,
        acquire_timeout_ms: u64,
        synchronous: SqliteSynchronous,
    },
    Postgres {
        url: SecretString,
        max_connections: u32,
        acquire_timeout_ms: u64,
        run_migrations: bool,
    },
    Mongodb {
        url: SecretString,
        acquire_timeout_ms: u64,
    },
    /// The in-memory reference store, for demos and fast tests: not durable (everything is
    /// lost when the server stops) and for a single instance only.
    Memory {},
}

impl StorageSettings {
    /// How long one storage call may take before the request is answered 503; `None` for
    /// the memory store, whose calls wait on nothing outside the process.
    pub fn deadline(&self) -> Option<Duration> {
        let ms = match self {
            StorageSettings::Sqlite { acquire_timeout_ms, .. }
            | StorageSettings::Postgres { acquire_timeout_ms, .. }
            | StorageSettings::Mongodb { acquire_timeout_ms, .. } => *acquire_timeout_ms,
            StorageSettings::Memory {} => return None,
        };
        Some(Duration::from_millis(ms))
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            StorageSettings::Sqlite { .. } => "sqlite",
            StorageSettings::Postgres { .. } => "postgres",
            StorageSettings::Mongodb { .. } => "mongodb",
            StorageSettings::Memory {} => "memory",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub jwt_secret: SecretString,
    pub token_ttl: u64,
    pub bcrypt_cost: u32,
}

impl AuthSettings {
    pub const MIN_SECRET_BYTES: usize = 32;

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CookieSettings {
    pub secure: bool,
    pub same_site: SameSite,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CorsSettings {
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpLimits {
    pub body_limit: usize,
    /// Seconds a request body has to arrive in full.
    pub body_timeout: u64,
    /// Seconds written data may wait for the client to take it before the connection is
    /// dropped.
    pub write_timeout: u64,
}

/// Rate and size limits on what clients repeat; 0 switches one off.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// The HTTP side's request-rate limits, in the same `[limits]` table.
    #[serde(flatten)]
    pub requests: chat_http::LimitSettings,
    pub sockets_per_user: usize,
    pub socket_frames_per_second: u32,
    /// Engine.IO sessions this instance holds, joined or not.
    pub socketio_sessions: usize,
    /// Engine.IO sessions per client address.
    pub socketio_sessions_per_ip: usize,
    /// Engine.IO handshakes per client address per minute.
    pub socketio_handshakes_per_minute_per_ip: u32,
}

/// The Socket.IO endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct SocketIoSettings {
    /// Seconds a session may stay without a successful CONNECT.
    pub connect_timeout: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebSocketSettings {
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_frame_bytes: usize,
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
// Read once at start: the size of the unused variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum FanoutSettings {
    Local {},
    Redis {
        /// `redis://` or `rediss://` (TLS), with the ACL user and password if any. Behind
        /// Sentinel only its scheme, user, password and db are used.
        redis_url: SecretString,
        /// The CA and client certificate of a `rediss://` connection.
        #[serde(default)]
        redis_tls: RedisTlsSettings,
        /// Redis Sentinel; absent: `redis_url` names the one Redis.
        #[serde(default)]
        sentinel: Option<SentinelSettings>,
        /// Starts every Redis key and channel name of this deployment.
        prefix: String,
        /// Seconds a crashed instance's users stay online.
        presence_ttl: u64,
        /// Milliseconds between two checks of the stream heads of this instance's users,
        /// which heal the sockets behind them (0: no check).
        #[serde(default = "default_stream_check_interval_ms")]
        stream_check_interval_ms: u64,
    },
}

fn default_stream_check_interval_ms() -> u64 {
    5000
}

/// PEM files for `rediss://`; an empty path counts as unset (an env variable set to "").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RedisTlsSettings {
    /// The CA that signed the Redis server's certificate; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// With `client_key_file`, for a Redis that asks for client certificates.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// `host:port` of each sentinel (CHAT__FANOUT__SENTINEL__ADDRESSES: comma-separated).
    pub addresses: Vec<String>,
    /// The sentinels' own credentials, when they have any.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<SecretString>,
    /// The sentinels listen with TLS (trusting `fanout.redis_tls`).
    #[serde(default)]
    pub tls: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// The built-in web client at `/`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebSettings {
    pub enabled: bool,
}

/// Group conversations.
#[derive(Debug, Clone, Deserialize)]
pub struct GroupSettings {
    /// Members a group may have at most, its creator included.
    pub max_members: u32,
}

impl GroupSettings {
    pub fn limits(&self) -> application::GroupLimits {
        application::GroupLimits { max_members: self.max_members }
    }
}

/// How clients learn who is online (docs/API.md, Presence).
#[derive(Debug, Clone, Deserialize)]
pub struct PresenceSettings {
    /// Up to this many online users every connection gets the whole online list on each
    /// change; above it, only its conversation partners' changes (back to the full list at
    /// four fifths of it).
    pub full_list_max: usize,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        Self { full_list_max: application::realtime::FULL_LIST_MAX }
    }
}

/// What may happen to messages after they were sent (docs/API.md, Message changes).
#[derive(Debug, Clone, Deserialize)]
pub struct MessageSettings {
    /// Seconds after sending during which its sender may edit a message; 0: forever.
    pub edit_window: u64,
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self { edit_window: domain::EditWindow::DEFAULT_SECS }
    }
}

impl MessageSettings {
    pub fn edit_window(&self) -> domain::EditWindow {
        domain::EditWindow::from_secs(self.edit_window)
    }
}

/// Prometheus metrics at `/metrics`, unauthenticated: off answers 404.
#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the layers for the environment named by `APP_ENV`/`CHAT_ENV`, from `config/`
    /// (or `CHAT_CONFIG_DIR`), and checks what can be checked before anything starts.
    pub fn load() -> anyhow::Result<Self> {
        let dir =
            std::env::var_os("CHAT_CONFIG_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("config"));
        Self::load_from(&dir, Environment::from_env()?)
    }

    pub fn load_from(dir: &Path, environment: Environment) -> anyhow::Result<Self> {
        let layered = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from(dir.join("default.toml")).required(false))
            .add_source(
                config::File::from(dir.join(environment.as_str()).with_extension("toml")).required(false),
            )
            .add_source(
                config::Environment::with_prefix("CHAT")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("cors.allowed_origins")
                    .with_list_parse_key("fanout.sentinel.addresses"),
            )
            .build()
            .context("cannot read the configuration")?;
        let mut settings: Settings =
            layered.try_deserialize().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        settings.environment = environment;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let secret_len = self.auth.jwt_secret.expose_secret().len();
        if self.environment == Environment::Production && secret_len < AuthSettings::MIN_SECRET_BYTES {
            anyhow::bail!(
                "auth.jwt_secret must be set to at least {} bytes in production (CHAT__AUTH__JWT_SECRET)",
                AuthSettings::MIN_SECRET_BYTES
            );
        }
        if secret_len > 0 && secret_len < AuthSettings::MIN_SECRET_BYTES {
            anyhow::bail!("auth.jwt_secret is shorter than {} bytes", AuthSettings::MIN_SECRET_BYTES);
        }
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            anyhow::bail!("auth.bcrypt_cost must be between 4 and 31");
        }
        if self.auth.token_ttl == 0 {
            anyhow::bail!("auth.token_ttl must be a positive number of seconds");
        }
        if self.websocket.ping_interval == 0 || self.websocket.ping_timeout == 0 {
            anyhow::bail!("websocket.ping_interval and websocket.ping_timeout must be positive");
        }
        if self.socketio.connect_timeout == 0 {
            anyhow::bail!("socketio.connect_timeout must be a positive number of seconds");
        }
        if self.http.write_timeout == 0 {
            anyhow::bail!("http.write_timeout must be a positive number of seconds");
        }
        if self.http.body_timeout == 0 {
            anyhow::bail!("http.body_timeout must be a positive number of seconds");
        }
        if self.server.max_connections == 0 {
            anyhow::bail!("server.max_connections must be positive");
        }
        if self.limits.requests.trust_forwarded_for && self.limits.requests.trusted_proxies == 0 {
            anyhow::bail!("limits.trusted_proxies must be at least 1 when limits.trust_forwarded_for is on");
        }
        if self.http.body_limit < 1024 {
            anyhow::bail!("http.body_limit must be at least 1024 bytes");
        }
        let allowed = application::GroupLimits::MAX_MEMBERS_ALLOWED;
        if !allowed.contains(&self.groups.max_members) {
            anyhow::bail!(
                "groups.max_members must be between {} and {} (it is {})",
                allowed.start(),
                allowed.end(),
                self.groups.max_members
            );
        }
        if let FanoutSettings::Redis { prefix, presence_ttl, .. } = &self.fanout {
            if prefix.is_empty() || prefix.chars().any(char::is_whitespace) {
                anyhow::bail!("fanout.prefix must be non-empty and without white space");
            }
            if *presence_ttl == 0 {
                anyhow::bail!("fanout.presence_ttl must be a positive number of seconds");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
    }

    #[test]
    fn defaults_load_for_every_environment_but_production_without_a_secret() {
        for env in [Environment::Development, Environment::Test] {
            let settings = Settings::load_from(&dir(), env).unwrap();
            assert_eq!(settings.storage.backend_name(), "sqlite");
            assert!(matches!(settings.fanout, FanoutSettings::Local {}));
        }
        let error = Settings::load_from(&dir(), Environment::Production).unwrap_err();
        assert!(error.to_string().contains("jwt_secret"), "{error}");
    }

    #[test]
    fn trusting_forwarded_for_needs_at_least_one_trusted_proxy() {
        let mut settings = Settings::load_from(&dir(), Environment::Test).unwrap();
        assert_eq!(settings.limits.requests.trusted_proxies, 1, "the default");
        settings.limits.requests.trust_forwarded_for = true;
        settings.validate().unwrap();
        settings.limits.requests.trusted_proxies = 0;
        let error = settings.validate().unwrap_err();
        assert!(error.to_string().contains("limits.trusted_proxies"), "{error}");
    }

    #[test]
    fn the_full_online_list_goes_out_up_to_1000_users_by_default() {
        let settings = Settings::load_from(&dir(), Environment::Test).unwrap();
        assert_eq!(settings.presence.full_list_max, 1000);
    }

    #[test]
    fn groups_hold_1000_members_by_default_and_between_2_and_10000_at_most() {
        let mut settings = Settings::load_from(&dir(), Environment::Test).unwrap();
        assert_eq!(settings.groups.max_members, 1000);
        for allowed in [2, 10_000] {
            settings.groups.max_members = allowed;
            settings.validate().unwrap();
        }
        for refused in [0, 1, 10_001] {
            settings.groups.max_members = refused;
            let error = settings.validate().unwrap_err().to_string();
            assert_eq!(
                error,
                format!("groups.max_members must be between 2 and 10000 (it is {refused})"),
                "{refused}"
            );
        }
    }

    #[test]
    fn the_memory_backend_loads_without_the_other_stores_fields_or_a_deadline() {
        let folder = std::env::temp_dir().join(format!("chat-settings-memory-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        // The defaults' url, pool and SQLite fields are still there underneath: ignored.
        std::fs::write(folder.join("development.toml"), "[storage]\nbackend = \"memory\"\n").unwrap();
        let settings = Settings::load_from(&folder, Environment::Development);
        let _ = std::fs::remove_dir_all(&folder);
        let storage = settings.unwrap().storage;
        assert!(matches!(storage, StorageSettings::Memory {}), "{storage:?}");
        assert_eq!(storage.backend_name(), "memory");
        assert_eq!(storage.deadline(), None);
    }

    #[test]
    fn the_cluster_example_selects_redis_fanout() {
        let folder = std::env::temp_dir().join(format!("chat-settings-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(dir().join("cluster.toml"), folder.join("development.toml")).unwrap();
        let settings = Settings::load_from(&folder, Environment::Development);
        let _ = std::fs::remove_dir_all(&folder);
        match settings.unwrap().fanout {
            FanoutSettings::Redis { prefix, presence_ttl, redis_tls, sentinel, .. } => {
                assert_eq!(prefix, "chat");
                assert_eq!(presence_ttl, 15);
                assert!(redis_tls.ca_file.is_none() && sentinel.is_none(), "{redis_tls:?} {sentinel:?}");
            }
            other => panic!("expected the Redis fan-out, got {other:?}"),
        }
    }

    #[test]
    fn tls_files_and_sentinels_load_from_a_file() {
        let folder = std::env::temp_dir().join(format!("chat-settings-sentinel-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("development.toml"),
            "[fanout]\nbackend = \"redis\"\nredis_url = \"rediss://chat:pw@ignored:6379/0\"\n\
             [fanout.redis_tls]\nca_file = \"/etc/chat/redis-ca.pem\"\n\
             [fanout.sentinel]\nmaster_name = \"chat\"\naddresses = [\"s1:26379\", \"s2:26379\"]\n\
             password = \"spw\"\n",
        )
        .unwrap();
        let settings = Settings::load_from(&folder, Environment::Development);
        let _ = std::fs::remove_dir_all(&folder);
        match settings.unwrap().fanout {
            FanoutSettings::Redis { redis_tls, sentinel: Some(sentinel), .. } => {
                assert_eq!(redis_tls.ca_file, Some(PathBuf::from("/etc/chat/redis-ca.pem")));
                assert_eq!(redis_tls.client_cert_file, None);
                assert_eq!(sentinel.master_name, "chat");
                assert_eq!(sentinel.addresses, ["s1:26379", "s2:26379"]);
                assert_eq!(sentinel.password.map(|p| p.expose_secret().to_owned()), Some("spw".into()));
                assert!(!sentinel.tls);
            }
            other => panic!("expected the Redis fan-out with Sentinel, got {other:?}"),
        }
    }
}
