//! Reactions to messages: which emoji a reaction may be, and the reactions a message carries
//! (one per user per emoji, a bounded number of distinct emoji).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::UserId;

/// One emoji of the Unicode emoji set (Unicode 17), in its fully-qualified spelling.
///
/// Accepted spellings of the same emoji are one reaction: the fully-qualified one (`❤️`), a
/// minimally- or unqualified one (`❤`, without the variation selector), and its GitHub
/// shortcode between colons (`:heart:`). All become the fully-qualified emoji, the only form
/// that is stored and sent. Anything else — text, two emoji, a skin-tone modifier alone — is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Emoji(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmojiError {
    #[error("must not be empty")]
    Empty,
    #[error("must be a single emoji or an emoji shortcode such as :thumbsup:")]
    NotAnEmoji,
    /// A stored value that is an emoji but not in the form this crate stores.
    #[error("must be the fully-qualified spelling of an emoji")]
    NotCanonical,
}

impl Emoji {
    /// Longer text is no emoji or shortcode (the longest sequences take about 35 bytes).
    const MAX_BYTES: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, EmojiError> {
        if raw.is_empty() {
            return Err(EmojiError::Empty);
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(EmojiError::NotAnEmoji);
        }
        let found = match raw.strip_prefix(':').and_then(|r| r.strip_suffix(':')) {
            Some(code) if !code.is_empty() => emojis::get_by_shortcode(code),
            _ => emojis::get(raw),
        };
        found.map(|emoji| Self(emoji.as_str().to_owned())).ok_or(EmojiError::NotAnEmoji)
    }

    /// An emoji read back from a store or a dump: only the fully-qualified spelling, the one
    /// [`Emoji::parse`] produces, so that one reaction has one stored key.
    pub fn stored(raw: &str) -> Result<Self, EmojiError> {
        let emoji = Self::parse(raw)?;
        if emoji.0 != raw {
            return Err(EmojiError::NotCanonical);
        }
        Ok(emoji)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Emoji {
    type Error = EmojiError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Emoji> for String {
    fn from(emoji: Emoji) -> String {
        emoji.0
    }
}

impl fmt::Display for Emoji {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The reactions of one message: for each emoji (in the order it was first used), the users
/// who reacted with it (in the order they did). A user reacts at most once with each emoji,
/// and a message carries at most [`Reactions::MAX_EMOJI`] distinct emoji.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reactions {
    by_emoji: Vec<(Emoji, Vec<UserId>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReactionError {
    #[error("a message carries at most {max} different emoji")]
    TooManyEmoji { max: usize },
}

/// One emoji of a message's reactions as one user sees it: how many reacted with it, and
/// whether the user is one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReactionView {
    pub emoji: Emoji,
    pub count: u64,
    pub me: bool,
}

impl Reactions {
    /// Distinct emoji one message may carry: enough for any conversation, few enough that a
    /// message stays small to store and to send.
    pub const MAX_EMOJI: usize = 20;

    pub fn new() -> Self {
        Self::default()
    }

    /// Reactions read back from a store, in the order they were made. A repeated pair is kept
    /// once; the cap is not applied (what was accepted once stays readable).
    pub fn from_stored(reactions: impl IntoIterator<Item = (Emoji, UserId)>) -> Self {
        let mut all = Self::new();
        for (emoji, user) in reactions {
            all.insert(emoji, user);
        }
        all
    }

    /// Adds `user`'s reaction with `emoji`. `Ok(false)` when it was there already (nothing
    /// changes); refused when it would be one emoji too many.
    pub fn add(&mut self, user: &UserId, emoji: &Emoji) -> Result<bool, ReactionError> {
        if self.users(emoji).is_none() && self.by_emoji.len() >= Self::MAX_EMOJI {
            return Err(ReactionError::TooManyEmoji { max: Self::MAX_EMOJI });
        }
        Ok(self.insert(emoji.clone(), user.clone()))
    }

    /// Takes `user`'s reaction with `emoji` back; `false` when there was none.
    pub fn remove(&mut self, user: &UserId, emoji: &Emoji) -> bool {
        let Some(index) = self.by_emoji.iter().position(|(e, _)| e == emoji) else {
            return false;
        };
        let users = &mut self.by_emoji[index].1;
        let Some(at) = users.iter().position(|u| u == user) else {
            return false;
        };
        users.remove(at);
        if users.is_empty() {
            self.by_emoji.remove(index);
        }
        true
    }

    pub fn has(&self, user: &UserId, emoji: &Emoji) -> bool {
        self.users(emoji).is_some_and(|users| users.contains(user))
    }

    pub fn count(&self, emoji: &Emoji) -> u64 {
        self.users(emoji).map_or(0, |users| users.len() as u64)
    }

    /// The users who reacted with `emoji`, in the order they did; `None` if nobody did.
    pub fn users(&self, emoji: &Emoji) -> Option<&[UserId]> {
        self.by_emoji.iter().find(|(e, _)| e == emoji).map(|(_, users)| users.as_slice())
    }

    /// Each emoji with its users, in the order the emoji were first used.
    pub fn iter(&self) -> impl Iterator<Item = (&Emoji, &[UserId])> {
        self.by_emoji.iter().map(|(emoji, users)| (emoji, users.as_slice()))
    }

    pub fn is_empty(&self) -> bool {
        self.by_emoji.is_empty()
    }

    /// What `viewer` is shown: `[{emoji, count, me}]`, in the order the emoji were first used.
    pub fn view(&self, viewer: &UserId) -> Vec<ReactionView> {
        self.iter()
            .map(|(emoji, users)| ReactionView {
                emoji: emoji.clone(),
                count: users.len() as u64,
                me: users.contains(viewer),
            })
            .collect()
    }

    fn insert(&mut self, emoji: Emoji, user: UserId) -> bool {
        match self.by_emoji.iter_mut().find(|(e, _)| *e == emoji) {
            Some((_, users)) if users.contains(&user) => false,
            Some((_, users)) => {
                users.push(user);
                true
            }
            None => {
                self.by_emoji.push((emoji, vec![user]));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn emoji(raw: &str) -> Emoji {
        Emoji::parse(raw).unwrap()
    }

    #[test]
    fn single_emoji_of_every_kind_are_accepted_as_sent() {
        for raw in ["👍", "❤️", "👩\u{200D}👩\u{200D}👧", "🏳️\u{200D}🌈", "🇫🇷", "👍🏽", "1️⃣", "🫶"]
        {
            assert_eq!(Emoji::parse(raw).map(String::from), Ok(raw.to_owned()), "{raw:?}");
        }
    }

    #[test]
    fn other_spellings_of_an_emoji_become_its_fully_qualified_one() {
        assert_eq!(emoji("❤").as_str(), "❤️");
        assert_eq!(emoji(":heart:").as_str(), "❤️");
        assert_eq!(emoji(":thumbsup:"), emoji("👍"));
        assert_eq!(emoji(":+1:"), emoji("👍"));
    }

    #[test]
    fn text_several_emoji_and_parts_of_emoji_are_refused() {
        assert_eq!(Emoji::parse(""), Err(EmojiError::Empty));
        for raw in [
            "a",
            "ok",
            "👍👍",
            "👍 ",
            " 👍",
            "🏽",
            "\u{200D}",
            "\u{FE0F}",
            "::",
            ":nope:",
            "thumbsup",
            ":thumbsup",
        ] {
            assert_eq!(Emoji::parse(raw), Err(EmojiError::NotAnEmoji), "{raw:?}");
        }
        assert_eq!(Emoji::parse(&"👍".repeat(40)), Err(EmojiError::NotAnEmoji));
    }

    #[test]
    fn only_the_fully_qualified_spelling_is_read_back_from_a_store() {
        assert_eq!(Emoji::stored("❤️").map(String::from), Ok("❤️".to_owned()));
        assert_eq!(Emoji::stored("❤"), Err(EmojiError::NotCanonical));
        assert_eq!(Emoji::stored(":heart:"), Err(EmojiError::NotCanonical));
    }

    #[test]
    fn an_emoji_is_a_json_string() {
        let json = serde_json::to_string(&emoji("👍")).unwrap();
        assert_eq!(json, "\"👍\"");
        assert_eq!(serde_json::from_str::<Emoji>("\":heart:\"").unwrap(), emoji("❤️"));
        assert!(serde_json::from_str::<Emoji>("\"x\"").is_err());
    }

    #[test]
    fn a_user_reacts_once_per_emoji() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let mut reactions = Reactions::new();
        assert_eq!(reactions.add(&alice, &emoji("👍")), Ok(true));
        assert_eq!(reactions.add(&alice, &emoji(":+1:")), Ok(false));
        assert_eq!(reactions.add(&bob, &emoji("👍")), Ok(true));
        assert_eq!(reactions.add(&alice, &emoji("🎉")), Ok(true));
        assert_eq!(reactions.count(&emoji("👍")), 2);
        assert!(reactions.has(&alice, &emoji("🎉")) && !reactions.has(&bob, &emoji("🎉")));
    }

    #[test]
    fn the_last_reaction_taken_back_removes_the_emoji() {
        let alice = UserId::generate();
        let mut reactions = Reactions::new();
        reactions.add(&alice, &emoji("👍")).unwrap();
        assert!(reactions.remove(&alice, &emoji("👍")));
        assert!(!reactions.remove(&alice, &emoji("👍")));
        assert!(reactions.is_empty());
        assert_eq!(reactions.users(&emoji("👍")), None);
    }

    #[test]
    fn a_message_carries_a_bounded_number_of_distinct_emoji() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let mut reactions = Reactions::new();
        let all: Vec<Emoji> =
            emojis::iter().take(Reactions::MAX_EMOJI + 1).map(|e| emoji(e.as_str())).collect();
        for e in &all[..Reactions::MAX_EMOJI] {
            assert_eq!(reactions.add(&alice, e), Ok(true));
        }
        let too_many = Err(ReactionError::TooManyEmoji { max: Reactions::MAX_EMOJI });
        assert_eq!(reactions.add(&alice, &all[Reactions::MAX_EMOJI]), too_many);
        // One more user on an emoji already there is no new emoji.
        assert_eq!(reactions.add(&bob, &all[0]), Ok(true));
    }

    #[test]
    fn each_viewer_sees_counts_in_first_use_order_and_their_own_reactions() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let mut reactions = Reactions::new();
        reactions.add(&alice, &emoji("🎉")).unwrap();
        reactions.add(&bob, &emoji("👍")).unwrap();
        reactions.add(&alice, &emoji("👍")).unwrap();
        let view = |emoji_: &str, count, me| ReactionView { emoji: emoji(emoji_), count, me };
        assert_eq!(reactions.view(&alice), [view("🎉", 1, true), view("👍", 2, true)]);
        assert_eq!(reactions.view(&bob), [view("🎉", 1, false), view("👍", 2, true)]);
        let json = serde_json::to_value(reactions.view(&bob)).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"emoji": "🎉", "count": 1, "me": false}, {"emoji": "👍", "count": 2, "me": true}])
        );
    }

    #[test]
    fn stored_reactions_keep_their_order_and_drop_repeats() {
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let reactions = Reactions::from_stored([
            (emoji("👍"), bob.clone()),
            (emoji("🎉"), alice.clone()),
            (emoji("👍"), alice.clone()),
            (emoji("👍"), bob.clone()),
        ]);
        let listed: Vec<_> = reactions.iter().map(|(e, users)| (e.clone(), users.to_vec())).collect();
        assert_eq!(listed, [(emoji("👍"), vec![bob, alice.clone()]), (emoji("🎉"), vec![alice])]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(usize, usize),
        Remove(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // More emoji than the cap, so that the cap is reached.
        let (users, emoji) = (0..4usize, 0..Reactions::MAX_EMOJI + 5);
        prop_oneof![
            3 => (users.clone(), emoji.clone()).prop_map(|(u, e)| Op::Add(u, e)),
            1 => (users, emoji).prop_map(|(u, e)| Op::Remove(u, e)),
        ]
    }

    proptest! {
        #[test]
        fn reactions_behave_like_a_capped_set_of_user_emoji_pairs(ops in proptest::collection::vec(op(), 0..200)) {
            let users: Vec<UserId> = (0..4).map(|_| UserId::generate()).collect();
            let all: Vec<Emoji> = emojis::iter().take(Reactions::MAX_EMOJI + 5).map(|e| emoji(e.as_str())).collect();
            let mut reactions = Reactions::new();
            let mut model: BTreeSet<(usize, usize)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Add(u, e) => {
                        let distinct: BTreeSet<usize> = model.iter().map(|&(_, e)| e).collect();
                        let full = !distinct.contains(&e) && distinct.len() >= Reactions::MAX_EMOJI;
                        let expected = if full {
                            Err(ReactionError::TooManyEmoji { max: Reactions::MAX_EMOJI })
                        } else {
                            Ok(model.insert((u, e)))
                        };
                        prop_assert_eq!(reactions.add(&users[u], &all[e]), expected);
                    }
                    Op::Remove(u, e) => prop_assert_eq!(reactions.remove(&users[u], &all[e]), model.remove(&(u, e))),
                }
            }
            for (e, emoji_) in all.iter().enumerate() {
                let count = model.iter().filter(|&&(_, me)| me == e).count() as u64;
                prop_assert_eq!(reactions.count(emoji_), count);
            }
            prop_assert!(reactions.iter().count() <= Reactions::MAX_EMOJI);
            for (u, user) in users.iter().enumerate() {
                for view in reactions.view(user) {
                    let e = all.iter().position(|x| *x == view.emoji).unwrap();
                    prop_assert!(view.count > 0);
                    prop_assert_eq!(view.me, model.contains(&(u, e)));
                }
            }
        }

        #[test]
        fn emoji_parse_never_panics_and_yields_stored_spellings(raw in "\\PC{0,8}|:[a-z_+1-]{0,12}:") {
            if let Ok(emoji) = Emoji::parse(&raw) {
                prop_assert_eq!(Emoji::stored(emoji.as_str()), Ok(emoji.clone()));
            }
        }
    }
}
