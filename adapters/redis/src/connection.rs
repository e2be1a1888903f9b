//! The command connection: one multiplexed connection for every publish and presence
//! write, made once Redis first answers and re-established by itself after a loss.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long one Redis round trip may take before it counts as failed.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Commands {
    client: redis::Client,
    /// Created by the heartbeat once Redis first answers; reconnects by itself after.
    connection: Mutex<Option<ConnectionManager>>,
}

impl Commands {
    pub(crate) fn new(client: redis::Client) -> Self {
        Self { client, connection: Mutex::new(None) }
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection, once made; fails at once before that.
    pub(crate) fn get(&self) -> anyhow::Result<ConnectionManager> {
        self.slot().clone().ok_or_else(|| anyhow!("not connected to Redis yet"))
    }

    /// The connection, made now if it was not yet (within [`OPERATION_TIMEOUT`]).
    pub(crate) async fn ensure(&self) -> anyhow::Result<ConnectionManager> {
        if let Ok(connection) = self.get() {
            return Ok(connection);
        }
        // Reconnection after a loss: first retry after ~1 s, then at most every 2 s, four
        // times per loss (the next command starts another round).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(OPERATION_TIMEOUT)
            .set_response_timeout(OPERATION_TIMEOUT)
            .set_factor(2)
            .set_max_delay(2000)
            .set_number_of_retries(4);
        let connection = timed(ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .context("connecting to Redis")?;
        *self.slot() = Some(connection.clone());
        Ok(connection)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        // Only ever replaced whole: a panic elsewhere leaves it whole.
        self.connection.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) async fn publish_with(
    connection: &mut ConnectionManager,
    channel: &str,
    payload: &str,
) -> anyhow::Result<()> {
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
