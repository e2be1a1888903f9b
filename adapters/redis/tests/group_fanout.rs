//! A group's events cross instances as one publication naming the group, and each instance
//! delivers them to its own connections of the group's members, as they are after the
//! change the event names.
//!
//! Needs a Redis at `CHAT_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`; the test uses a
//! key prefix of its own). A Redis that can't be reached fails the test: there are no silent
//! skips.

use std::sync::Arc;
use std::time::Duration;

use application::ports::{
    Changed, Event, GroupAppended, GroupChange, GroupRepository as _, HealthCheck as _,
    MessageRepository as _, Notifier as _,
};
use chat_memory::MemoryStore;
use chat_realtime::{ConnectionRegistry, Delivery, GroupMembers, Queued, Receiver, SessionToken};
use chat_redis::{FanoutOptions, RedisFanout};
use domain::{
    ConversationId, Group, GroupName, Member, Message, MessageBody, MessageId, Role, SystemEvent, UserId,
};
use futures_util::StreamExt as _;

const TIMEOUT: Duration = Duration::from_secs(10);

fn redis_url() -> String {
    std::env::var("CHAT_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Instance {
    fanout: Arc<RedisFanout>,
    registry: Arc<ConnectionRegistry>,
}

impl Instance {
    async fn start(prefix: &str, store: &Arc<MemoryStore>) -> Self {
        let options = FanoutOptions {
            url: redis_url(),
            tls: Default::default(),
            sentinel: None,
            prefix: prefix.into(),
            presence_ttl: Duration::from_secs(15),
        };
        let registry = ConnectionRegistry::new(64, 0);
        let delivery = Delivery::new(registry.clone(), GroupMembers::new(store.clone()));
        let fanout = RedisFanout::start(options, delivery).unwrap();
        let live = async {
            while fanout.ping().await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(TIMEOUT, live).await.unwrap_or_else(|_| {
            panic!(
                "no Redis at {}: start one with `redis-server --daemonize yes --port 6379 --save \"\"` \
                 or set CHAT_TEST_REDIS_URL",
                redis_url()
            )
        });
        Self { fanout, registry }
    }

    fn connect(&self, user: &UserId) -> (chat_realtime::ConnectionGuard, Receiver) {
        let token = SessionToken {
            id: UserId::generate().to_string(),
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        };
        self.registry.register(user, &token).unwrap()
    }
}

fn entry(group: &ConversationId, from: &UserId, system: Option<SystemEvent>) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: group.clone(),
        sender_id: from.clone(),
        receiver_id: None,
        body: MessageBody::parse("hello").unwrap(),
        system,
        seq: 0,
        created_at: chrono::Utc::now(),
        client_id: None,
    }
}

/// The group entry (by seq) or frame (by name) a connection got next, within the timeout.
/// A catch-up (queued when the subscription goes live) is skipped: it carries no event.
async fn next(rx: &mut Receiver) -> String {
    loop {
        let got = tokio::time::timeout(TIMEOUT, rx.recv()).await.expect("an event in time").expect("open");
        return match got {
            Queued::Stream(streamed) => match &streamed.event {
                Event::GroupMessage { message, .. } => format!("entry {}", message.seq),
                other => format!("{other:?}"),
            },
            Queued::Frame(frame) => frame.name.to_owned(),
            Queued::CatchUp(_) => continue,
        };
    }
}

/// Nothing more arrives for a while (the bus keeps order: a marker sent after would be first).
async fn nothing(rx: &mut Receiver) {
    while let Ok(got) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        if !matches!(got, Some(Queued::CatchUp(_))) {
            panic!("unexpected: {got:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_event_is_published_once_and_reaches_the_members_on_every_instance() {
    let prefix = format!("test-groups-{}", uuid::Uuid::new_v4().simple());
    let store = Arc::new(MemoryStore::new());
    let (a, b) = (Instance::start(&prefix, &store).await, Instance::start(&prefix, &store).await);
    let (owner, kept, removed, stranger) =
        (UserId::generate(), UserId::generate(), UserId::generate(), UserId::generate());

    let now = chrono::Utc::now();
    let id = ConversationId::generate();
    let name = GroupName::parse("Crew").unwrap();
    let group = Group {
        id: id.clone(),
        name: name.clone(),
        created_by: owner.clone(),
        created_at: now,
        updated_at: now,
        last_seq: 0,
    };
    let everyone = vec![owner.clone(), kept.clone(), removed.clone()];
    let members: Vec<Member> =
        everyone.iter().map(|u| Member::joining(u.clone(), Role::Member, now, 1)).collect();
    let created =
        entry(&id, &owner, Some(SystemEvent::Created { actor: owner.clone(), name, members: everyone }));
    store.create(&group, &members, &created).await.unwrap();

    // The owner is connected to `a`; the others, twice for one, to `b`.
    let (_g1, mut at_owner) = a.connect(&owner);
    let (_g2, mut at_kept) = b.connect(&kept);
    let (_g3, mut at_kept_too) = b.connect(&kept);
    let (_g4, mut at_removed) = b.connect(&removed);
    let (_g5, mut at_stranger) = b.connect(&stranger);

    let mut watch = redis::Client::open(redis_url().as_str()).unwrap().get_async_pubsub().await.unwrap();
    watch.subscribe(format!("{prefix}:events")).await.unwrap();
    let mut published = watch.into_on_message();

    let GroupAppended::Created { message, version } =
        store.append_to_group(&entry(&id, &owner, None)).await.unwrap()
    else {
        panic!("sent");
    };
    a.fanout.notify_group(&id, &Event::GroupMessage { message, version }).await.unwrap();
    let payload: String =
        tokio::time::timeout(TIMEOUT, published.next()).await.unwrap().unwrap().get_payload().unwrap();
    let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["to"], serde_json::json!({"group": id.as_str()}), "the group, not its members");
    for rx in [&mut at_owner, &mut at_kept, &mut at_kept_too, &mut at_removed] {
        assert_eq!(next(rx).await, "entry 2");
    }

    // `removed` leaves the group: from the change on, none of its events reach them.
    let change = GroupChange {
        expected_version: version,
        entry: entry(
            &id,
            &owner,
            Some(SystemEvent::Removed { actor: owner.clone(), users: vec![removed.clone()] }),
        ),
        rename: None,
        add: Vec::new(),
        remove: vec![removed.clone()],
        roles: Vec::new(),
    };
    let Changed::Applied { entry: removal, version, .. } = store.change(&id, &change).await.unwrap() else {
        panic!("applied");
    };
    a.fanout.notify_group(&id, &Event::GroupMessage { message: removal, version }).await.unwrap();
    assert_eq!(next(&mut at_owner).await, "entry 3");
    for rx in [&mut at_kept, &mut at_kept_too] {
        assert_eq!(next(rx).await, "entry 3");
    }
    // Once `b` has had the change, its members are the new ones for every event of the
    // group, also those that name no version: a read receipt made there reaches the owner
    // on `a`, and neither its reader nor the removed member.
    let receipt = Event::MessagesRead {
        conversation: id.clone(),
        user: kept.clone(),
        seq: 3,
        up_to: MessageId::generate(),
    };
    b.fanout.notify_group(&id, &receipt).await.unwrap();
    assert_eq!(next(&mut at_owner).await, "messagesRead", "from the other instance");
    assert_eq!(published.next().await.map(|_| ()), Some(()));
    assert_eq!(published.next().await.map(|_| ()), Some(()), "one publication per event");
    for rx in [&mut at_kept, &mut at_removed, &mut at_stranger] {
        nothing(rx).await;
    }
}
