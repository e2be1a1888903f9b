//! Presence bookkeeping, free of IO: this instance's connection counts, what of them still
//! has to reach Redis, and which online list this instance's connections were last shown
//! (none in the scoped presence mode, where they get changes of their partners instead).

use std::collections::{BTreeSet, HashMap, HashSet};

use domain::UserId;

/// What has to be written to this instance's presence hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Nothing changed since the last write.
    None,
    /// Set these counts; `0` means remove the user.
    Some(Vec<(UserId, usize)>),
    /// Replace the whole hash with these counts (after a Redis restart, a failed write, or
    /// as the periodic heartbeat).
    All(Vec<(UserId, usize)>),
}

#[derive(Debug, Default)]
pub struct PresenceBook {
    local: HashMap<UserId, usize>,
    dirty: HashSet<UserId>,
    rewrite: bool,
    announced: Option<BTreeSet<UserId>>,
    generation: u64,
    scoped: bool,
}

impl PresenceBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a new local connection. Returns `true` when this instance's connections have
    /// not been shown the user online yet: the caller then announces a new list, which is
    /// bound to differ from the last one and so reaches every connection, this one included.
    /// Returning `false` means the user is in the last list shown; the caller hands the new
    /// connection a snapshot instead.
    pub fn connected(&mut self, user: &UserId) -> bool {
        *self.local.entry(user.clone()).or_insert(0) += 1;
        self.dirty.insert(user.clone());
        !self.announced.as_ref().is_some_and(|shown| shown.contains(user))
    }

    /// Counts a closed local connection. Returns `true` when it was the user's last one on
    /// this instance. The user may still be online elsewhere: the list the caller then
    /// announces is unchanged and every instance drops it as a repeat.
    pub fn disconnected(&mut self, user: &UserId) -> bool {
        match self.local.get_mut(user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                self.dirty.insert(user.clone());
                false
            }
            Some(_) => {
                self.local.remove(user);
                self.dirty.insert(user.clone());
                true
            }
            None => false,
        }
    }

    pub fn local_users(&self) -> impl Iterator<Item = &UserId> {
        self.local.keys()
    }

    /// Takes what has to be written since the last call.
    pub fn take_changes(&mut self) -> Changes {
        if std::mem::take(&mut self.rewrite) {
            self.dirty.clear();
            let mut all: Vec<_> = self.local.iter().map(|(u, n)| (u.clone(), *n)).collect();
            all.sort();
            return Changes::All(all);
        }
        if self.dirty.is_empty() {
            return Changes::None;
        }
        let mut some: Vec<_> = self
            .dirty
            .drain()
            .map(|user| {
                let count = self.local.get(&user).copied().unwrap_or(0);
                (user, count)
            })
            .collect();
        some.sort();
        Changes::Some(some)
    }

    /// The next write replaces the whole hash: a write failed, or Redis may have lost it.
    pub fn rewrite_all(&mut self) {
        self.rewrite = true;
    }

    /// Records `users` as the list this instance's connections are shown; `false` if they
    /// were shown exactly this list last, so that it isn't delivered twice.
    pub fn announce(&mut self, users: &[UserId]) -> bool {
        let list: BTreeSet<UserId> = users.iter().cloned().collect();
        if self.announced.as_ref() == Some(&list) {
            return false;
        }
        self.announced = Some(list);
        self.generation += 1;
        true
    }

    /// The presence mode this instance's connections were told. Either switch forgets the
    /// list last shown: the next full list goes out whatever it is, to connections opened
    /// in the scoped mode too.
    pub fn set_scoped(&mut self, scoped: bool) {
        self.scoped = scoped;
        self.announced = None;
        self.generation += 1;
    }

    /// Whether connections were told the scoped mode: no full list is shown by the sweep.
    pub fn scoped(&self) -> bool {
        self.scoped
    }

    /// Counts announcements, for [`announce_if_unchanged`](Self::announce_if_unchanged).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Like [`announce`](Self::announce), unless another list was announced since
    /// `generation` was read: a periodic sweep that read Redis before a fresher list came in
    /// must not overwrite it with its older view (the next sweep looks again).
    pub fn announce_if_unchanged(&mut self, generation: u64, users: &[UserId]) -> bool {
        generation == self.generation && self.announce(users)
    }
}

/// The cluster's online users: this instance's own, from memory (always current), plus
/// those in other live instances' hashes. Unparseable ids are skipped.
pub fn cluster_view<'a>(
    local: impl IntoIterator<Item = &'a UserId>,
    others: impl IntoIterator<Item = String>,
) -> Vec<UserId> {
    let mut online: BTreeSet<UserId> = local.into_iter().cloned().collect();
    for raw in others {
        match UserId::parse(&raw) {
            Ok(user) => {
                online.insert(user);
            }
            Err(_) => tracing::debug!(field = %raw, "skipping a presence entry that is not a user id"),
        }
    }
    online.into_iter().collect()
}

/// The users of a stopped instance's hash (as last read) who are not `online` now: those who
/// went offline with it. Unparseable ids are skipped.
pub fn departed(users: Vec<String>, online: &[UserId]) -> Vec<UserId> {
    let online: BTreeSet<&UserId> = online.iter().collect();
    users.iter().filter_map(|raw| UserId::parse(raw).ok()).filter(|user| !online.contains(user)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_connection_asks_for_an_announcement_until_one_shows_the_user() {
        let mut book = PresenceBook::new();
        let user = UserId::generate();
        assert!(book.connected(&user));
        assert!(book.connected(&user), "not announced yet: a second device asks too");
        assert!(book.announce(std::slice::from_ref(&user)));
        assert!(!book.connected(&user), "already shown online: a snapshot will do");
    }

    #[test]
    fn a_user_online_elsewhere_needs_no_announcement_when_connecting_here() {
        let mut book = PresenceBook::new();
        let user = UserId::generate();
        book.announce(std::slice::from_ref(&user));
        assert!(!book.connected(&user));
    }

    #[test]
    fn only_the_last_local_connection_closing_counts() {
        let mut book = PresenceBook::new();
        let user = UserId::generate();
        book.connected(&user);
        book.connected(&user);
        assert!(!book.disconnected(&user));
        assert!(book.disconnected(&user));
        assert!(!book.disconnected(&user), "an unknown close changes nothing");
        assert_eq!(book.local_users().count(), 0);
    }

    #[test]
    fn changes_carry_current_counts_and_zero_for_removals() {
        let mut book = PresenceBook::new();
        let (a, b) = (UserId::generate(), UserId::generate());
        book.connected(&a);
        book.connected(&a);
        book.connected(&b);
        book.disconnected(&b);
        let mut expected = vec![(a.clone(), 2), (b.clone(), 0)];
        expected.sort();
        assert_eq!(book.take_changes(), Changes::Some(expected));
        assert_eq!(book.take_changes(), Changes::None);
    }

    #[test]
    fn a_rewrite_sends_every_local_count_and_supersedes_pending_changes() {
        let mut book = PresenceBook::new();
        let (a, b) = (UserId::generate(), UserId::generate());
        book.connected(&a);
        book.connected(&b);
        book.disconnected(&b);
        book.rewrite_all();
        assert_eq!(book.take_changes(), Changes::All(vec![(a, 1)]));
        assert_eq!(book.take_changes(), Changes::None);
    }

    #[test]
    fn the_same_list_is_announced_once_whatever_its_order() {
        let mut book = PresenceBook::new();
        let (a, b) = (UserId::generate(), UserId::generate());
        assert!(book.announce(&[a.clone(), b.clone()]));
        assert!(!book.announce(&[b.clone(), a.clone()]));
        assert!(book.announce(std::slice::from_ref(&a)));
        assert!(book.announce(&[]), "an empty list differs from a list of one");
    }

    #[test]
    fn a_sweep_does_not_overwrite_a_list_announced_while_it_read() {
        let mut book = PresenceBook::new();
        let (a, b) = (UserId::generate(), UserId::generate());
        let before = book.generation();
        assert!(book.announce(&[a.clone(), b.clone()]));
        assert!(!book.announce_if_unchanged(before, std::slice::from_ref(&a)));
        assert!(book.announce_if_unchanged(book.generation(), &[a]));
    }

    #[test]
    fn a_mode_switch_forgets_the_list_shown_so_the_next_one_goes_out() {
        let mut book = PresenceBook::new();
        let user = UserId::generate();
        let before = book.generation();
        assert!(book.announce(std::slice::from_ref(&user)));
        book.set_scoped(true);
        assert!(book.scoped());
        assert!(
            !book.announce_if_unchanged(before + 1, std::slice::from_ref(&user)),
            "a sweep that read before"
        );
        book.set_scoped(false);
        assert!(book.announce(std::slice::from_ref(&user)), "the same list goes out again");
    }

    #[test]
    fn a_stopped_instance_departs_with_its_users_not_online_elsewhere() {
        let (gone, elsewhere) = (UserId::generate(), UserId::generate());
        let users = vec![gone.to_string(), elsewhere.to_string(), "garbage".to_owned()];
        assert_eq!(departed(users, std::slice::from_ref(&elsewhere)), vec![gone]);
    }

    #[test]
    fn the_cluster_view_merges_local_and_remote_users_once_each() {
        let (a, b, c) = (UserId::generate(), UserId::generate(), UserId::generate());
        let view = cluster_view([&a, &b], [b.to_string(), c.to_string(), "garbage".to_owned()]);
        let mut expected = vec![a, b, c];
        expected.sort();
        assert_eq!(view, expected);
    }
}
