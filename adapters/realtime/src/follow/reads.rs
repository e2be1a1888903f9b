//! The store as one connection's follower sees it, every query counted: what a catch-up
//! cost is the count after it less the count before it (see `Healing::store_reads`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use application::ports::{
    Appended, Changed, GroupAppended, GroupChange, GroupEntry, GroupPosition, GroupRepository, GroupState,
    MembersPreview, MessageRepository, Noticed, ReadMoved, RepoResult, StreamItem,
};
use async_trait::async_trait;
use domain::{Conversation, ConversationId, Cursor, Group, Member, Message, MessageId, Seq, UserId};

/// Queries made through the stores [`Reads::messages`] and [`Reads::groups`] wrap.
#[derive(Debug, Clone, Default)]
pub(super) struct Reads(Arc<AtomicU64>);

impl Reads {
    pub(super) fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn messages(&self, inner: Arc<dyn MessageRepository>) -> Arc<dyn MessageRepository> {
        Arc::new(Messages { inner, reads: self.clone() })
    }

    pub(super) fn groups(&self, inner: Arc<dyn GroupRepository>) -> Arc<dyn GroupRepository> {
        Arc::new(Groups { inner, reads: self.clone() })
    }
}

struct Messages {
    inner: Arc<dyn MessageRepository>,
    reads: Reads,
}

#[async_trait]
impl MessageRepository for Messages {
    async fn append(&self, conversation: &Conversation, message: &Message) -> RepoResult<Appended> {
        self.reads.add();
        self.inner.append(conversation, message).await
    }

    async fn append_to_group(&self, message: &Message) -> RepoResult<GroupAppended> {
        self.reads.add();
        self.inner.append_to_group(message).await
    }

    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        from_seq: Seq,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>> {
        self.reads.add();
        self.inner.list_by_conversation(conversation, from_seq, before, limit).await
    }

    async fn entries(
        &self,
        conversation: &ConversationId,
        after: Seq,
        until: Option<Seq>,
        limit: u32,
    ) -> RepoResult<Vec<GroupEntry>> {
        self.reads.add();
        self.inner.entries(conversation, after, until, limit).await
    }

    async fn mark_read(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        up_to: &MessageId,
    ) -> RepoResult<ReadMoved> {
        self.reads.add();
        self.inner.mark_read(conversation, user, up_to).await
    }

    async fn stream(&self, user: &UserId, after: Cursor, limit: u32) -> RepoResult<Vec<StreamItem>> {
        self.reads.add();
        self.inner.stream(user, after, limit).await
    }

    async fn stream_head(&self, user: &UserId) -> RepoResult<Cursor> {
        self.reads.add();
        self.inner.stream_head(user).await
    }

    async fn stream_heads(&self, users: &[UserId]) -> RepoResult<Vec<(UserId, Cursor)>> {
        self.reads.add();
        self.inner.stream_heads(users).await
    }
}

struct Groups {
    inner: Arc<dyn GroupRepository>,
    reads: Reads,
}

#[async_trait]
impl GroupRepository for Groups {
    async fn create(&self, group: &Group, members: &[Member], created: &Message) -> RepoResult<Vec<Noticed>> {
        self.reads.add();
        self.inner.create(group, members, created).await
    }

    async fn state(&self, group: &ConversationId) -> RepoResult<Option<GroupState>> {
        self.reads.add();
        self.inner.state(group).await
    }

    async fn member_ids(&self, group: &ConversationId) -> RepoResult<Option<(Vec<UserId>, u64)>> {
        self.reads.add();
        self.inner.member_ids(group).await
    }

    async fn change(&self, group: &ConversationId, change: &GroupChange) -> RepoResult<Changed> {
        self.reads.add();
        self.inner.change(group, change).await
    }

    async fn members_preview(
        &self,
        groups: &[ConversationId],
        limit: u32,
    ) -> RepoResult<Vec<MembersPreview>> {
        self.reads.add();
        self.inner.members_preview(groups, limit).await
    }

    async fn groups_at(&self, user: &UserId, at: Cursor) -> RepoResult<Vec<GroupPosition>> {
        self.reads.add();
        self.inner.groups_at(user, at).await
    }

    async fn groups_at_head(&self, user: &UserId) -> RepoResult<(Cursor, Vec<GroupPosition>)> {
        self.reads.add();
        self.inner.groups_at_head(user).await
    }

    async fn left_after(
        &self,
        user: &UserId,
        group: &ConversationId,
        after: Cursor,
    ) -> RepoResult<Option<Seq>> {
        self.reads.add();
        self.inner.left_after(user, group, after).await
    }
}
