//! Presence across instances: this instance's connection counts ([`PresenceBook`]) mirrored
//! into a hash of its own that expires unless refreshed, and the sweep that notices when
//! another instance's hash is gone.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use application::ports::{Event, Presence, RepoError, RepoResult};
use async_trait::async_trait;
use domain::UserId;

use crate::connection::timed;
use crate::presence::{self, Changes, PresenceBook};
use crate::{RedisFanout, Shared};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each use is one insert, remove or take: a panic elsewhere leaves the value whole.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes an instance from the set of instances unless its presence hash still exists, in
/// one step, so that an instance writing its hash at the same moment is never forgotten.
const FORGET_IF_GONE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('SREM', KEYS[1], ARGV[1])
end
return 0
";

pub(crate) struct PresenceSync {
    book: Mutex<PresenceBook>,
    /// Presence writes go out one at a time, each with the counts current when it starts,
    /// so the last write always leaves Redis matching memory.
    writing: tokio::sync::Mutex<()>,
    /// How long this instance's hash lives unless refreshed.
    pub(crate) ttl: Duration,
    forget_if_gone: redis::Script,
    /// The users last read in each other instance's hash: who went with it if it stops.
    remote: Mutex<HashMap<String, Vec<String>>>,
    /// Users of a stopped instance, offline now, that the core has not taken yet (scoped
    /// presence mode only: in the full-list mode the sweep's list shows them gone).
    departed: Mutex<Vec<UserId>>,
}

impl PresenceSync {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            book: Mutex::new(PresenceBook::new()),
            writing: tokio::sync::Mutex::new(()),
            ttl,
            forget_if_gone: redis::Script::new(FORGET_IF_GONE),
            remote: Mutex::default(),
            departed: Mutex::default(),
        }
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, PresenceBook> {
        // Every mutation of the book is a single call: a panic elsewhere leaves it whole.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Shared {
    /// Writes what changed in the local counts (everything after [`PresenceBook::rewrite_all`]).
    /// A failed write is retried whole by the next heartbeat.
    pub(crate) async fn write_presence(&self) {
        if !self.bus.up() {
            self.presence.book().rewrite_all();
            return;
        }
        let _one_at_a_time = self.presence.writing.lock().await;
        let changes = self.presence.book().take_changes();
        if let Err(error) = self.write_changes(changes).await {
            tracing::warn!(error = format!("{error:#}"), "presence not written; retrying shortly");
            self.presence.book().rewrite_all();
        }
    }

    async fn write_changes(&self, changes: Changes) -> anyhow::Result<()> {
        let key = self.keys.presence(&self.instance);
        let ttl_ms = u64::try_from(self.presence.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        pipe.atomic();
        match changes {
            Changes::None => return Ok(()),
            Changes::Some(counts) => {
                for (user, count) in &counts {
                    if *count > 0 {
                        pipe.cmd("HSET").arg(&key).arg(user.as_str()).arg(*count).ignore();
                    } else {
                        pipe.cmd("HDEL").arg(&key).arg(user.as_str()).ignore();
                    }
                }
            }
            Changes::All(counts) => {
                pipe.cmd("DEL").arg(&key).ignore();
                if !counts.is_empty() {
                    let hset = pipe.cmd("HSET").arg(&key);
                    for (user, count) in &counts {
                        hset.arg(user.as_str()).arg(*count);
                    }
                    hset.ignore();
                }
            }
        }
        // An empty hash no longer exists in Redis: there is nothing to keep alive.
        let any_local = self.presence.book().local_users().next().is_some();
        if any_local {
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
            pipe.cmd("SADD").arg(&self.keys.instances).arg(&self.instance).ignore();
        }
        let mut connection = self.redis.get()?;
        let () = timed(pipe.query_async(&mut connection)).await.context("writing presence")?;
        Ok(())
    }

    /// The online users of the cluster, and the instances whose hash is gone.
    async fn cluster_view(&self) -> anyhow::Result<(Vec<UserId>, Vec<String>)> {
        let mut connection = self.redis.get()?;
        let instances: Vec<String> =
            timed(redis::cmd("SMEMBERS").arg(&self.keys.instances).query_async(&mut connection))
                .await
                .context("listing instances")?;
        let others: Vec<String> = instances.into_iter().filter(|id| *id != self.instance).collect();
        let mut pipe = redis::pipe();
        for id in &others {
            pipe.cmd("HKEYS").arg(self.keys.presence(id));
        }
        let users: Vec<Vec<String>> = if others.is_empty() {
            Vec::new()
        } else {
            timed(pipe.query_async(&mut connection)).await.context("reading presence")?
        };
        let gone = others
            .iter()
            .zip(&users)
            .filter(|(_, users)| users.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        {
            // A hash read empty keeps its last users: they are who went with the instance.
            let mut remote = lock(&self.presence.remote);
            for (id, users) in others.iter().zip(&users) {
                if !users.is_empty() {
                    remote.insert(id.clone(), users.clone());
                }
            }
        }
        let book = self.presence.book();
        let online = presence::cluster_view(book.local_users(), users.into_iter().flatten());
        Ok((online, gone))
    }

    /// Those of `users` online here or in another instance's hash: one `HMGET` per other
    /// instance, however many users are asked about.
    async fn online_among(&self, users: &[UserId]) -> anyhow::Result<Vec<UserId>> {
        let (mut online, mut rest): (Vec<UserId>, Vec<UserId>) = {
            let book = self.presence.book();
            let local: std::collections::HashSet<&UserId> = book.local_users().collect();
            users.iter().cloned().partition(|user| local.contains(user))
        };
        if rest.is_empty() {
            return Ok(online);
        }
        let mut connection = self.redis.get()?;
        let instances: Vec<String> =
            timed(redis::cmd("SMEMBERS").arg(&self.keys.instances).query_async(&mut connection))
                .await
                .context("listing instances")?;
        let others: Vec<String> = instances.into_iter().filter(|id| *id != self.instance).collect();
        if others.is_empty() {
            return Ok(online);
        }
        let mut pipe = redis::pipe();
        for id in &others {
            let hmget = pipe.cmd("HMGET").arg(self.keys.presence(id));
            for user in &rest {
                hmget.arg(user.as_str());
            }
        }
        let counts: Vec<Vec<Option<String>>> =
            timed(pipe.query_async(&mut connection)).await.context("reading presence")?;
        let mut found = vec![false; rest.len()];
        for per_instance in &counts {
            for (seen, count) in found.iter_mut().zip(per_instance) {
                *seen |= count.is_some();
            }
        }
        let mut found = found.into_iter();
        rest.retain(|_| found.next().unwrap_or(false));
        online.append(&mut rest);
        Ok(online)
    }

    /// Compares the cluster's online list with the one last shown here and shows the new
    /// one if they differ: this is how a crashed instance's users go offline.
    pub(crate) async fn sweep(&self) -> anyhow::Result<()> {
        let generation = self.presence.book().generation();
        let (online, gone) = self.cluster_view().await?;
        let mut connection = self.redis.get()?;
        for id in gone {
            let mut invocation = self.presence.forget_if_gone.key(&self.keys.instances);
            invocation.key(self.keys.presence(&id)).arg(&id);
            let forgotten = matches!(timed(invocation.invoke_async::<i64>(&mut connection)).await, Ok(1));
            if forgotten {
                tracing::info!(instance = %id, "an instance stopped refreshing its presence");
            }
            // Only the one instance that forgot it reports its users, so that their partners
            // hear of it once.
            let users = lock(&self.presence.remote).remove(&id).unwrap_or_default();
            if forgotten && self.presence.book().scoped() {
                let departed = presence::departed(users, &online);
                lock(&self.presence.departed).extend(departed);
            }
        }
        let mut book = self.presence.book();
        // In the scoped mode connections get their partners' changes, never the whole list.
        if !book.scoped() && book.announce_if_unchanged(generation, &online) {
            self.delivery.to_users(None, &Event::OnlineUsers(online));
        }
        Ok(())
    }
}

/// Counts change in memory at once; Redis follows before the call returns when it can (so
/// that other instances' sweeps agree with the list announced next), or with the next
/// heartbeat once it is back.
#[async_trait]
impl Presence for RedisFanout {
    async fn connected(&self, user: &UserId) -> RepoResult<bool> {
        let first = self.shared.presence.book().connected(user);
        self.shared.write_presence().await;
        Ok(first)
    }

    async fn disconnected(&self, user: &UserId) -> RepoResult<bool> {
        let last = self.shared.presence.book().disconnected(user);
        self.shared.write_presence().await;
        Ok(last)
    }

    async fn online(&self) -> RepoResult<Vec<UserId>> {
        self.shared.cluster_view().await.map(|(online, _)| online).map_err(RepoError::Unavailable)
    }

    async fn online_among(&self, users: &[UserId]) -> RepoResult<Vec<UserId>> {
        self.shared.online_among(users).await.map_err(RepoError::Unavailable)
    }

    async fn take_departed(&self) -> RepoResult<Vec<UserId>> {
        Ok(std::mem::take(&mut *lock(&self.shared.presence.departed)))
    }
}
