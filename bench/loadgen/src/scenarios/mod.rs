//! One module per subcommand. `send` also holds the sender/receiver pair machinery that
//! `connect` and `group-send` reuse; `groups` what the group scenarios share.

pub mod changes;
pub mod connect;
pub mod group_fanout;
pub mod group_send;
pub mod groups;
pub mod history;
pub mod login;
pub mod outage;
pub mod presence_storm;
pub mod send;
pub mod unread_list;

use std::time::Duration;

use crate::api::Api;

/// Waits (bounded) for the server to answer `/readyz`.
pub async fn wait_ready(api: &Api) -> anyhow::Result<()> {
    for _ in 0..100 {
        if api.ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server did not answer /readyz with 200 within 10 s")
}
