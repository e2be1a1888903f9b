//! The command connection: one multiplexed connection for every publish and presence
//! write, made once Redis first answers and re-established after a loss: to the same
//! address by the redis crate's connection manager, or, behind Sentinel, to whichever
//! node the sentinels name as primary then (see [`Link`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};
use tokio::sync::Notify;

use crate::endpoint::Endpoint;

/// How long one Redis round trip may take before it counts as failed.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Commands {
    endpoint: Endpoint,
    /// Created by the heartbeat once Redis first answers; see [`Link`] for what happens after.
    connection: Mutex<Option<Link>>,
    /// Wakes the heartbeat to make a new connection (one that follows the primary was lost).
    pub(crate) reconnect: Notify,
}

impl Commands {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self { endpoint, connection: Mutex::new(None), reconnect: Notify::new() }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The connection, once made and while not lost; fails at once otherwise.
    pub(crate) fn get(&self) -> anyhow::Result<Link> {
        let mut slot = self.slot();
        match slot.as_ref() {
            Some(link) if link.lost() => {
                *slot = None;
                self.reconnect.notify_one();
                Err(anyhow!("lost the connection to the Redis primary; reconnecting"))
            }
            Some(link) => Ok(link.clone()),
            None => Err(anyhow!("not connected to Redis yet")),
        }
    }

    /// Forgets the connection, so that the next one asks again where the primary is (after
    /// the subscription, which follows the same primary, was cut).
    pub(crate) fn forget(&self) {
        if self.slot().take().is_some() {
            self.reconnect.notify_one();
        }
    }

    /// The connection, made now if it was not yet (within [`OPERATION_TIMEOUT`] per step).
    pub(crate) async fn ensure(&self) -> anyhow::Result<Link> {
        if let Ok(connection) = self.get() {
            return Ok(connection);
        }
        let link = match &self.endpoint {
            Endpoint::Direct(client) => {
                // Reconnection after a loss: first retry after ~1 s, then at most every 2 s,
                // four times per loss (the next command starts another round).
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(OPERATION_TIMEOUT)
                    .set_response_timeout(OPERATION_TIMEOUT)
                    .set_factor(2)
                    .set_max_delay(2000)
                    .set_number_of_retries(4);
                let manager = timed(ConnectionManager::new_with_config(client.clone(), config))
                    .await
                    .context("connecting to Redis")?;
                Link::Managed(manager)
            }
            Endpoint::Sentinel(_) => {
                let client = self.endpoint.primary().await?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(OPERATION_TIMEOUT)
                    .set_response_timeout(OPERATION_TIMEOUT);
                let connection = timed(client.get_multiplexed_async_connection_with_config(&config))
                    .await
                    .context("connecting to the Redis primary")?;
                Link::Followed(Followed { connection, lost: Arc::default() })
            }
        };
        *self.slot() = Some(link.clone());
        Ok(link)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Link>> {
        // Only ever replaced whole: a panic elsewhere leaves it whole.
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The command connection.
///
/// `Managed` reconnects by itself to the one address it knows. `Followed` (behind Sentinel)
/// never does: the old primary may be back as a replica, which would take a `PUBLISH`
/// without an error and deliver it to no other instance. Instead, an error that says the
/// connection is gone or the node no longer takes writes marks it lost, and the heartbeat
/// makes a new one to the node the sentinels name then.
#[derive(Clone)]
pub(crate) enum Link {
    Managed(ConnectionManager),
    Followed(Followed),
}

#[derive(Clone)]
pub(crate) struct Followed {
    connection: MultiplexedConnection,
    lost: Arc<AtomicBool>,
}

impl Link {
    fn lost(&self) -> bool {
        match self {
            Self::Managed(_) => false,
            Self::Followed(followed) => followed.lost.load(Ordering::Acquire),
        }
    }
}

impl Followed {
    fn watch<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(error) = result {
            if error.is_io_error()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error()
                || error.is_timeout()
                || error.kind() == redis::ErrorKind::ReadOnly
            {
                self.lost.store(true, Ordering::Release);
            }
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Managed(manager) => manager.req_packed_command(cmd),
            Self::Followed(followed) => Box::pin(async move {
                let result = followed.connection.req_packed_command(cmd).await;
                followed.watch(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Managed(manager) => manager.req_packed_commands(cmd, offset, count),
            Self::Followed(followed) => Box::pin(async move {
                let result = followed.connection.req_packed_commands(cmd, offset, count).await;
                followed.watch(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Managed(manager) => manager.get_db(),
            Self::Followed(followed) => followed.connection.get_db(),
        }
    }
}

pub(crate) async fn publish_with(connection: &mut Link, channel: &str, payload: &str) -> anyhow::Result<()> {
    let _: i64 = timed(redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(connection)).await?;
    Ok(())
}

/// Runs a Redis call with [`OPERATION_TIMEOUT`].
pub(crate) async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, call).await {
        Ok(result) => result.map_err(anyhow::Error::from),
        Err(_) => Err(anyhow!("Redis did not answer within {OPERATION_TIMEOUT:?}")),
    }
}
