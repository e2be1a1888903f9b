//! Unbounded reads: conversation list paging, user search.

use std::collections::HashSet;

use super::*;

const CONVERSATIONS: &str = "/api/v1/message/conversations";

/// The `_id`s of a conversation list page.
fn conversation_ids(page: &Value) -> Vec<String> {
    page.as_array()
        .expect("an array of conversations")
        .iter()
        .map(|c| c["_id"].as_str().expect("_id").to_owned())
        .collect()
}

/// Every page of `me`'s conversation list, `limit` at a time, following `X-Next-Cursor`;
/// after each page but the last, the sends `between` names for it are made. Fails if the
/// walk does not end.
async fn walk_conversations(
    api: &Api,
    me: &TestUser,
    limit: u32,
    between: impl Fn(usize) -> Vec<(TestUser, TestUser)>,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..100 {
        let mut path = format!("{CONVERSATIONS}?limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let reply = api.get(&path, Some(&me.token)).await;
        pages.push(conversation_ids(reply.data(StatusCode::OK)));
        match reply.header("x-next-cursor") {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        for (from, to) in between(page) {
            api.send(&from.token, &to.id, "meanwhile").await.data(StatusCode::CREATED);
        }
    }
    panic!("the conversation list never ends");
}

#[tokio::test]
async fn conversations_are_paged_by_cursor_each_once_while_messages_arrive() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let me = api.create_user(&unique("me")).await;
    let mut partners = Vec::new();
    for i in 0..7 {
        let partner = api.create_user(&unique(&format!("p{i}"))).await;
        api.send(&partner.token, &me.id, "hi").await.data(StatusCode::CREATED);
        partners.push(partner);
    }
    // Newest first.
    let all = conversation_ids(api.get(CONVERSATIONS, Some(&me.token)).await.data(StatusCode::OK));
    assert_eq!(all.len(), 7);

    let quiet = walk_conversations(&api, &me, 3, |_| Vec::new()).await;
    assert_eq!(quiet.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(quiet.concat(), all, "every conversation once, in order");

    // After the first page, one conversation already listed (p6's) and one not reached yet
    // (p1's) get a message and move to the front: neither comes twice, the walk ends, and
    // the others keep their order; the one not reached is skipped by this walk.
    let (listed, ahead) = (partners[6].clone(), partners[1].clone());
    let me_too = me.clone();
    let busy = walk_conversations(&api, &me, 3, |page| match page {
        0 => vec![(listed.clone(), me_too.clone()), (ahead.clone(), me_too.clone())],
        _ => Vec::new(),
    })
    .await
    .concat();
    let unique_ids: HashSet<&String> = busy.iter().collect();
    assert_eq!(unique_ids.len(), busy.len(), "no conversation twice: {busy:?}");
    let expected: Vec<String> = all.iter().filter(|id| **id != all[5]).cloned().collect();
    assert_eq!(busy, expected);
    let front = conversation_ids(api.get(CONVERSATIONS, Some(&me.token)).await.data(StatusCode::OK));
    assert_eq!(front[..2], [all[5].clone(), all[0].clone()], "both moved to the front");
    assert_eq!(front.len(), 7);
}

#[tokio::test]
async fn without_a_limit_the_first_page_holds_200_conversations_and_a_cursor() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let me = api.create_user(&unique("me")).await;
    let partners: Vec<TestUser> = futures_util::stream::iter(0..201)
        .map(|i| {
            let api = api.clone();
            async move { api.create_user(&unique(&format!("p{i}"))).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for partner in &partners {
        api.send(&me.token, &partner.id, "hi").await.data(StatusCode::CREATED);
    }

    let first = api.get(CONVERSATIONS, Some(&me.token)).await;
    let first_ids = conversation_ids(first.data(StatusCode::OK));
    assert_eq!(first_ids.len(), 200);
    let cursor = first.header("x-next-cursor").expect("one more follows").to_owned();
    let rest = api.get(&format!("{CONVERSATIONS}?cursor={cursor}"), Some(&me.token)).await;
    let rest_ids = conversation_ids(rest.data(StatusCode::OK));
    assert_eq!(rest_ids.len(), 1);
    assert!(rest.header("x-next-cursor").is_none(), "the last page has no cursor");
    assert!(!first_ids.contains(&rest_ids[0]));
    // The oldest conversation is the last one.
    let oldest = api.get(&format!("{CONVERSATIONS}?limit=1&cursor={cursor}"), Some(&me.token)).await;
    assert_eq!(conversation_ids(oldest.data(StatusCode::OK)), rest_ids);

    // A short list is what old clients always got: the whole list, no header.
    let partner = &partners[0];
    let theirs = api.get(CONVERSATIONS, Some(&partner.token)).await;
    assert_eq!(conversation_ids(theirs.data(StatusCode::OK)).len(), 1);
    assert!(theirs.header("x-next-cursor").is_none());
}

#[tokio::test]
async fn a_forged_conversation_cursor_is_refused_and_a_foreign_one_reaches_only_mine() {
    let app = spawn(|_| {}).await;
    let api = app.api();
    let (me, bob, carol, dave) = (
        api.create_user(&unique("me")).await,
        api.create_user(&unique("bob")).await,
        api.create_user(&unique("carol")).await,
        api.create_user(&unique("dave")).await,
    );
    api.send(&me.token, &bob.id, "hi").await.data(StatusCode::CREATED);
    api.send(&carol.token, &dave.id, "hi").await.data(StatusCode::CREATED);
    api.send(&carol.token, &bob.id, "hi").await.data(StatusCode::CREATED);

    let bobs = api.get(&format!("{CONVERSATIONS}?limit=1"), Some(&bob.token)).await;
    let cursor = bobs.header("x-next-cursor").expect("bob has two").to_owned();
    let (micros, rest) = cursor.split_once('.').expect("a cursor has parts");
    let id = rest.rsplit('.').next().expect("a conversation id");
    for forged in [
        "x".to_owned(),
        bob.username.to_ascii_lowercase(),
        format!("{micros}.{id}"),
        format!("0{micros}.{rest}"),
        format!("-{micros}.{rest}"),
        format!("{micros}.{rest}.x"),
        format!("{micros}.{}", rest.to_uppercase()),
        "99999999999999999..00000000-0000-0000-0000-000000000000".to_owned(),
        "%7B%22%24gt%22%3A%22%22%7D".to_owned(),
        "1.%00.2".to_owned(),
    ] {
        let reply = api.get(&format!("{CONVERSATIONS}?cursor={forged}"), Some(&me.token)).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
        assert_eq!(reply.body["field"], "cursor", "{forged}: {}", reply.text);
    }
    for bad_limit in ["-1", "x", "99999999999"] {
        let reply = api.get(&format!("{CONVERSATIONS}?limit={bad_limit}"), Some(&me.token)).await;
        reply.error(StatusCode::BAD_REQUEST, "VALIDATION");
    }
    // Bob's cursor is a well-formed position, and in my list it is only that: what follows
    // it is my own conversations, never Bob's or anyone else's.
    let mine = api.get(&format!("{CONVERSATIONS}?cursor={cursor}"), Some(&me.token)).await;
    for conversation in mine.data(StatusCode::OK).as_array().unwrap() {
        assert!(conversation["participants"].as_array().unwrap().contains(&json!(me.id)), "{conversation}");
    }
    // Without a token there is nothing to page.
    api.get(&format!("{CONVERSATIONS}?cursor={cursor}"), None)
        .await
        .error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED");
}

#[tokio::test]
async fn user_searches_are_rate_limited_per_user_and_listing_is_not() {
    let app = spawn(|s| s.limits.requests.searches_per_second_per_user = 3).await;
    let api = app.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;
    let search = |text: &str| format!("/api/v1/user/get-other-users?search={text}");

    for _ in 0..3 {
        api.get(&search("bo"), Some(&alice.token)).await.data(StatusCode::OK);
    }
    api.get(&search("bob"), Some(&alice.token)).await.rate_limited();
    // Listing without a search (or with a blank one) is an index range like any page: not
    // counted, not refused.
    for path in ["/api/v1/user/get-other-users", "/api/v1/user/get-other-users?search=%20"] {
        for _ in 0..5 {
            api.get(path, Some(&alice.token)).await.data(StatusCode::OK);
        }
    }
    // Another user has an allowance of their own; the prefix finds Alice.
    let found = api.get(&search("ALI"), Some(&bob.token)).await;
    let names: Vec<&str> = found
        .data(StatusCode::OK)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["username"].as_str())
        .collect();
    assert_eq!(names, [alice.username.as_str()]);
    // The allowance comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.get(&search("bo"), Some(&alice.token)).await.data(StatusCode::OK);
}

#[test]
fn the_search_limit_is_a_setting_on_by_default() {
    let settings = Settings::load_from(&tests::workspace_dir().join("config"), Environment::Development)
        .expect("the default configuration loads");
    assert_eq!(settings.limits.requests.searches_per_second_per_user, 5);
}
