//! A deadline on every storage call, whatever the backend.
//!
//! Pool and server-selection timeouts only cover getting a connection. A connection that
//! was fine and then stops answering (a cut network, a stalled server) would hold a request
//! until TCP gives up, minutes later. Wrapping each port call in a deadline turns that into
//! `Unavailable` (503) within a bounded time; the driver drops the abandoned connection and
//! the pool opens fresh ones when the database is back, so the server recovers by itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use application::ports::{
    Appended, ChangeOutcome, ChangeRequest, Changed, ConversationKey, ConversationPage,
    ConversationRepository, ConversationSummary, GroupAppended, GroupChange, GroupEntry, GroupPosition,
    GroupRepository, GroupState, HealthCheck, MembersPreview, MessageChangeRepository, MessageRepository,
    Noticed, ReadMoved, RepoError, RepoResult, Revocation, RevokedTokenRepository, StreamItem, UserQuery,
    UserRepository,
};
use async_trait::async_trait;
use domain::{
    Chat, Conversation, ConversationId, Cursor, Group, Member, Message, MessageId, ParticipantPair, Seq,
    Timestamp, User, UserId, Username,
};

use crate::Storage;

/// Delegates to the inner store, failing with `Unavailable` past the deadline.
pub struct Bounded<T: ?Sized> {
    inner: Arc<T>,
    deadline: Duration,
}

impl<T: ?Sized> Bounded<T> {
    async fn run<R>(&self, what: &'static str, call: impl Future<Output = RepoResult<R>>) -> RepoResult<R> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(RepoError::Unavailable(anyhow::anyhow!(
                "{what} took longer than {} ms",
                self.deadline.as_millis()
            ))),
        }
    }
}

/// Puts every port of `storage` behind the same deadline.
pub fn bounded(storage: Storage, deadline: Duration) -> Storage {
    fn wrap<T: ?Sized>(inner: Arc<T>, deadline: Duration) -> Arc<Bounded<T>> {
        Arc::new(Bounded { inner, deadline })
    }
    Storage {
        users: wrap(storage.users, deadline),
        conversations: wrap(storage.conversations, deadline),
        messages: wrap(storage.messages, deadline),
        groups: wrap(storage.groups, deadline),
        revoked: wrap(storage.revoked, deadline),
        health: wrap(storage.health, deadline),
        changes: wrap(storage.changes, deadline),
    }
}

#[async_trait]
impl UserRepository for Bounded<dyn UserRepository> {
    async fn insert(&self, user: &User) -> RepoResult<()> {
        self.run("inserting a user", self.inner.insert(user)).await
    }
    async fn find_by_id(&self, id: &UserId) -> RepoResult<Option<User>> {
        self.run("finding a user", self.inner.find_by_id(id)).await
    }
    async fn find_many(&self, ids: &[UserId]) -> RepoResult<Vec<User>> {
        self.run("finding users", self.inner.find_many(ids)).await
    }
    async fn find_by_username(&self, username: &Username) -> RepoResult<Option<User>> {
        self.run("finding a user", self.inner.find_by_username(username)).await
    }
    async fn list(&self, query: &UserQuery) -> RepoResult<Vec<User>> {
        self.run("listing users", self.inner.list(query)).await
    }
}

#[async_trait]
impl ConversationRepository for Bounded<dyn ConversationRepository> {
    async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation> {
        self.run("storing a conversation", self.inner.find_or_insert(candidate)).await
    }
    async fn find_by_participants(&self, pair: &ParticipantPair) -> RepoResult<Option<Conversation>> {
        self.run("finding a conversation", self.inner.find_by_participants(pair)).await
    }
    async fn find(&self, id: &ConversationId) -> RepoResult<Option<Chat>> {
        self.run("finding a conversation", self.inner.find(id)).await
    }
    async fn member(&self, conversation: &ConversationId, user: &UserId) -> RepoResult<Option<Member>> {
        self.run("finding a member", self.inner.member(conversation, user)).await
    }
    async fn page(
        &self,
        pair: &ParticipantPair,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Option<ConversationPage>> {
        self.run("reading a conversation page", self.inner.page(pair, before, limit)).await
    }
    async fn page_for_user(
        &self,
        user: &UserId,
        after: Option<ConversationKey>,
        limit: u32,
    ) -> RepoResult<Vec<ConversationSummary>> {
        self.run("listing conversations", self.inner.page_for_user(user, after, limit)).await
    }
}

#[async_trait]
impl MessageChangeRepository for Bounded<dyn MessageChangeRepository> {
    async fn find(&self, message: &MessageId) -> RepoResult<Option<Message>> {
        self.run("reading a message", self.inner.find(message)).await
    }
    async fn change(&self, request: &ChangeRequest) -> RepoResult<ChangeOutcome> {
        self.run("changing a message", self.inner.change(request)).await
    }
}

#[async_trait]
impl MessageRepository for Bounded<dyn MessageRepository> {
    async fn append(&self, conversation: &Conversation, message: &Message) -> RepoResult<Appended> {
        self.run("storing a message", self.inner.append(conversation, message)).await
    }
    async fn append_to_group(&self, message: &Message) -> RepoResult<GroupAppended> {
        self.run("storing a group message", self.inner.append_to_group(message)).await
    }
    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        from_seq: Seq,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>> {
        let listing = self.inner.list_by_conversation(conversation, from_seq, before, limit);
        self.run("listing messages", listing).await
    }
    async fn entries(
        &self,
        conversation: &ConversationId,
        after: Seq,
        until: Option<Seq>,
        limit: u32,
    ) -> RepoResult<Vec<GroupEntry>> {
        self.run("reading entries", self.inner.entries(conversation, after, until, limit)).await
    }
    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        up_to: &MessageId,
    ) -> RepoResult<ReadMoved> {
        self.run("marking read", self.inner.mark_read(conversation, user, up_to)).await
    }
    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
        self.run("reading a message stream", self.inner.stream(user, after, limit)).await
    }
    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
        self.run("reading a stream head", self.inner.stream_head(user)).await
    }
    async fn stream_heads(&self, users: &[UserId]) -> RepoResult<Vec<(UserId, Cursor)>> {
        self.run("reading stream heads", self.inner.stream_heads(users)).await
    }
}

#[async_trait]
impl GroupRepository for Bounded<dyn GroupRepository> {
    async fn create(&self, group: &Group, members: &[Member], created: &Message) -> RepoResult<Vec<Noticed>> {
        self.run("storing a group", self.inner.create(group, members, created)).await
    }
    async fn state(&self, group: &ConversationId) -> RepoResult<Option<GroupState>> {
        self.run("reading a group", self.inner.state(group)).await
    }
    async fn member_ids(&self, group: &ConversationId) -> RepoResult<Option<(Vec<UserId>, u64)>> {
        self.run("reading a group's members", self.inner.member_ids(group)).await
    }
    async fn change(&self, group: &ConversationId, change: &GroupChange) -> RepoResult<Changed> {
        self.run("changing a group", self.inner.change(group, change)).await
    }
    async fn members_preview(
        &self,
        groups: &[ConversationId],
        limit: u32,
    ) -> RepoResult<Vec<MembersPreview>> {
        self.run("reading groups' members", self.inner.members_preview(groups, limit)).await
    }
    async fn groups_at(&self, user: &UserId, at: Cursor) -> RepoResult<Vec<GroupPosition>> {
        self.run("reading a user's groups", self.inner.groups_at(user, at)).await
    }
    async fn groups_at_head(&self, user: &UserId) -> RepoResult<(Cursor, Vec<GroupPosition>)> {
        self.run("reading where a user's stream and groups stand", self.inner.groups_at_head(user)).await
    }
    async fn left_after(
        &self,
        user: &UserId,
        group: &ConversationId,
        after: Cursor,
    ) -> RepoResult<Option<Seq>> {
        self.run("reading a user's group notices", self.inner.left_after(user, group, after)).await
    }
}

#[async_trait]
impl RevokedTokenRepository for Bounded<dyn RevokedTokenRepository> {
    async fn revoke(&self, token_id: &str, expires_at: Timestamp) -> RepoResult<()> {
        self.run("revoking a token", self.inner.revoke(token_id, expires_at)).await
    }
    async fn is_revoked(&self, token_id: &str) -> RepoResult<bool> {
        self.run("checking a revocation", self.inner.is_revoked(token_id)).await
    }
    async fn active(&self, now: Timestamp) -> RepoResult<Vec<Revocation>> {
        self.run("listing revocations", self.inner.active(now)).await
    }
    async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64> {
        self.run("purging revocations", self.inner.purge_expired(now)).await
    }
}

#[async_trait]
impl HealthCheck for Bounded<dyn HealthCheck> {
    async fn ping(&self) -> RepoResult<()> {
        self.run("pinging the store", self.inner.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stalled;

    #[async_trait]
    impl HealthCheck for Stalled {
        async fn ping(&self) -> RepoResult<()> {
            std::future::pending().await
        }
    }

    struct Quick;

    #[async_trait]
    impl HealthCheck for Quick {
        async fn ping(&self) -> RepoResult<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_call_past_the_deadline_is_unavailable() {
        let stalled: Arc<dyn HealthCheck> = Arc::new(Stalled);
        let bounded = Bounded { inner: stalled, deadline: Duration::from_millis(50) };
        assert!(matches!(bounded.ping().await, Err(RepoError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_call_within_the_deadline_passes_through() {
        let quick: Arc<dyn HealthCheck> = Arc::new(Quick);
        let bounded = Bounded { inner: quick, deadline: Duration::from_millis(50) };
        assert!(bounded.ping().await.is_ok());
    }
}
