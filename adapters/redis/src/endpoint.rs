//! Where Redis is and how to reach it: one address (`redis://`, or `rediss://` for TLS with a
//! CA and an optional client certificate), or the primary that Redis Sentinel names, asked
//! again at every (re)connection so that a failover is followed without a restart.
//!
//! Error messages name the options as the server's configuration does (`fanout.redis_url`,
//! `fanout.redis_tls.*`, `fanout.sentinel.*`): they are what an operator has to change.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo as _, TlsCertificates, TlsMode};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::connection::timed;
use crate::{FanoutOptions, SentinelOptions, TlsFiles};

pub(crate) enum Endpoint {
    /// One address: the connection comes back to it after a loss.
    Direct(redis::Client),
    /// The sentinels are asked for the primary at each connection. Behind a lock: the
    /// client caches its connections to the sentinels and needs `&mut` to ask.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Endpoint {
    pub(crate) fn new(options: &FanoutOptions) -> anyhow::Result<Self> {
        // Named once here for every TLS connection this process makes (the redis crate's
        // rustls asks for the process default); a second call finds it set, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificates = certificates(&options.tls)?;
        // The URL may hold a password: say what is wrong without repeating it.
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| anyhow!("fanout.redis_url is not a valid Redis URL ({:?})", e.kind()))?;
        let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
        if certificates.is_some() && !tls {
            bail!("fanout.redis_tls is set but fanout.redis_url does not start with rediss://");
        }
        match &options.sentinel {
            None => {
                let client = match certificates {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates),
                    None => redis::Client::open(info),
                }
                .map_err(|e| anyhow!("fanout.redis_tls: {e}"))?;
                Ok(Self::Direct(client))
            }
            Some(sentinel) => Ok(Self::Sentinel(tokio::sync::Mutex::new(sentinel_client(
                sentinel,
                info,
                tls,
                certificates,
            )?))),
        }
    }

    /// Whether the primary may move (Sentinel), so that a lost connection must ask again
    /// where it is rather than come back to the same address.
    pub(crate) fn follows_failover(&self) -> bool {
        matches!(self, Self::Sentinel(_))
    }

    /// A client for the primary as it is now; with Sentinel, one that answered `ROLE` as
    /// primary a moment ago.
    pub(crate) async fn primary(&self) -> anyhow::Result<redis::Client> {
        match self {
            Self::Direct(client) => Ok(client.clone()),
            Self::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                timed(sentinel.async_get_client()).await.context("asking the sentinels for the primary")
            }
        }
    }
}

fn sentinel_client(
    options: &SentinelOptions,
    primary: redis::ConnectionInfo,
    primary_tls: bool,
    certificates: Option<TlsCertificates>,
) -> anyhow::Result<SentinelClient> {
    if options.master_name.is_empty() {
        bail!("fanout.sentinel.master_name must be set");
    }
    if options.addresses.is_empty() {
        bail!("fanout.sentinel.addresses must list at least one sentinel (host:port)");
    }
    let mut addresses = Vec::with_capacity(options.addresses.len());
    for address in &options.addresses {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, _)| !host.is_empty())
            .ok_or_else(|| anyhow!("fanout.sentinel.addresses: {address:?} is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        addresses.push(if options.tls {
            ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None }
        } else {
            ConnectionAddr::Tcp(host, port)
        });
    }
    let mut builder =
        SentinelClientBuilder::new(addresses, options.master_name.clone(), SentinelServerType::Master)
            .map_err(|e| anyhow!("fanout.sentinel: {e}"))?
            .set_client_to_redis_db(primary.redis.db);
    if let Some(username) = primary.redis.username {
        builder = builder.set_client_to_redis_username(username);
    }
    if let Some(password) = primary.redis.password {
        builder = builder.set_client_to_redis_password(password);
    }
    if primary_tls {
        builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certificates) = &certificates {
            builder = builder.set_client_to_redis_certificates(certificates.clone());
        }
    }
    if let Some(username) = &options.username {
        builder = builder.set_client_to_sentinel_username(username.clone());
    }
    if let Some(password) = &options.password {
        builder = builder.set_client_to_sentinel_password(password.clone());
    }
    if options.tls {
        builder = builder.set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(certificates) = certificates {
            builder = builder.set_client_to_sentinel_certificates(certificates);
        }
    }
    builder.build().map_err(|e| anyhow!("fanout.sentinel: {e}"))
}

/// The CA and client certificate to use, read and checked now so that a wrong file stops
/// the start rather than every later connection. `None`: no files, the system's roots.
fn certificates(files: &TlsFiles) -> anyhow::Result<Option<TlsCertificates>> {
    let root_cert = match &files.ca_file {
        Some(path) => {
            let pem = read("fanout.redis_tls.ca_file", path)?;
            let found = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("fanout.redis_tls.ca_file ({}): {e}", path.display()))?;
            if found.is_empty() {
                bail!("fanout.redis_tls.ca_file ({}) holds no PEM certificate", path.display());
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let client_cert = read("fanout.redis_tls.client_cert_file", cert_path)?;
            if CertificateDer::pem_slice_iter(&client_cert).next().is_none() {
                bail!("fanout.redis_tls.client_cert_file ({}) holds no PEM certificate", cert_path.display());
            }
            let client_key = read("fanout.redis_tls.client_key_file", key_path)?;
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                anyhow!(
                    "fanout.redis_tls.client_key_file ({}) holds no PEM private key: {e}",
                    key_path.display()
                )
            })?;
            Some(ClientTlsConfig { client_cert, client_key })
        }
        (None, None) => None,
        _ => bail!("fanout.redis_tls.client_cert_file and fanout.redis_tls.client_key_file go together"),
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates { client_tls, root_cert }))
}

fn read(setting: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{setting}: cannot read {}", path.display()))
}

/// What a failed first contact says about the configuration: `Some` when retrying cannot
/// help (a certificate or a password is wrong), `None` when Redis may just not be up yet.
pub(crate) fn misconfiguration(error: &anyhow::Error, files: &TlsFiles) -> Option<String> {
    for cause in error.chain() {
        let tls = cause
            .downcast_ref::<rustls::Error>()
            .or_else(|| cause.downcast_ref::<std::io::Error>()?.get_ref()?.downcast_ref::<rustls::Error>());
        if let Some(tls) = tls {
            return Some(match tls {
                rustls::Error::InvalidCertificate(_) => match &files.ca_file {
                    Some(path) => format!(
                        "fanout.redis_tls.ca_file ({}): the Redis server's certificate is not \
                         trusted by this CA ({tls})",
                        path.display()
                    ),
                    None => format!(
                        "fanout.redis_tls.ca_file: the Redis server's certificate is not trusted \
                         by the system's roots; name its CA in this setting ({tls})"
                    ),
                },
                _ => format!(
                    "the TLS handshake with Redis failed; check fanout.redis_tls.ca_file, \
                     client_cert_file and client_key_file ({tls})"
                ),
            });
        }
        if let Some(redis) = cause.downcast_ref::<redis::RedisError>() {
            if redis.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(redis.code(), Some("WRONGPASS" | "NOAUTH"))
            {
                return Some(format!(
                    "Redis refused the user name or password of fanout.redis_url ({})",
                    redis.code().unwrap_or("authentication failed")
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn options(url: &str, tls: TlsFiles, sentinel: Option<SentinelOptions>) -> FanoutOptions {
        FanoutOptions {
            url: url.into(),
            tls,
            sentinel,
            prefix: "unit".into(),
            presence_ttl: Duration::from_secs(15),
        }
    }

    fn error(options: &FanoutOptions) -> String {
        match Endpoint::new(options) {
            Ok(_) => panic!("accepted"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn a_missing_ca_file_is_refused_naming_the_setting() {
        let tls = TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), ..TlsFiles::default() };
        let error = error(&options("rediss://127.0.0.1:6380", tls, None));
        assert!(error.starts_with("fanout.redis_tls.ca_file: cannot read /nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let path = std::env::temp_dir().join(format!("chat-redis-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        let tls = TlsFiles { ca_file: Some(path.clone()), ..TlsFiles::default() };
        let error = error(&options("rediss://127.0.0.1:6380", tls, None));
        let _ = std::fs::remove_file(&path);
        assert!(
            error.contains("fanout.redis_tls.ca_file") && error.contains("no PEM certificate"),
            "{error}"
        );
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let tls = TlsFiles { client_cert_file: Some("/x/cert.pem".into()), ..TlsFiles::default() };
        let error = error(&options("rediss://127.0.0.1:6380", tls, None));
        assert!(error.contains("go together"), "{error}");
    }

    #[test]
    fn tls_files_need_a_rediss_url() {
        let path = std::env::temp_dir().join(format!("chat-redis-ca-{}.pem", std::process::id()));
        // Any well-formed PEM certificate block will do to get past the file check.
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n").unwrap();
        let tls = TlsFiles { ca_file: Some(path.clone()), ..TlsFiles::default() };
        let error = error(&options("redis://127.0.0.1:6379", tls, None));
        let _ = std::fs::remove_file(&path);
        assert!(error.contains("rediss://"), "{error}");
    }

    #[test]
    fn sentinel_addresses_are_host_and_port() {
        let sentinel = |addresses: &[&str]| SentinelOptions {
            master_name: "chat".into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            username: None,
            password: None,
            tls: false,
        };
        let url = "redis://:secret@ignored:6379/2";
        assert!(Endpoint::new(&options(
            url,
            TlsFiles::default(),
            Some(sentinel(&["a:26379", "[::1]:26379"]))
        ))
        .unwrap()
        .follows_failover());
        for wrong in [&[][..], &["a"], &["a:port"], &[":26379"]] {
            let error = error(&options(url, TlsFiles::default(), Some(sentinel(wrong))));
            assert!(error.starts_with("fanout.sentinel.addresses"), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        let error = error(&options("http://user:secret@x", TlsFiles::default(), None));
        assert!(error.starts_with("fanout.redis_url") && !error.contains("secret"), "{error}");
    }
}
