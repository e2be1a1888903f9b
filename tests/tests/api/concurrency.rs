use std::collections::HashSet;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;

use crate::helpers::spawn_app;
use tests::PASSWORD;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_username_registered_twenty_times_at_once_is_created_once() {
    let app = Arc::new(spawn_app().await);
    let barrier = Arc::new(Barrier::new(20));
    // The same name, spelled twenty ways: uniqueness ignores case.
    let spellings: Vec<String> = (0..20)
        .map(|i: u32| {
            "racer"
                .chars()
                .enumerate()
                .map(|(n, c)| if i >> n & 1 == 1 { c.to_ascii_uppercase() } else { c })
                .collect()
        })
        .collect();

    let attempts = spellings.into_iter().map(|username| {
        let (app, barrier) = (app.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            app.register(&json!({ "fullName": "Racer", "username": username, "password": PASSWORD })).await
        })
    });
    let responses = futures_util::future::join_all(attempts).await;

    let mut created = 0;
    let mut conflicts = 0;
    for response in responses {
        let response = response.expect("the request task ran");
        match response.status {
            StatusCode::CREATED => {
                response.data(StatusCode::CREATED);
                created += 1;
            }
            _ => {
                response.error(StatusCode::CONFLICT, "CONFLICT");
                conflicts += 1;
            }
        }
    }
    assert_eq!((created, conflicts), (1, 19));
    let me = app.create_user("watcher").await;
    let users = app.other_users(&me.token, &[("search", "racer")]).await;
    assert_eq!(users.data(StatusCode::OK).as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_first_messages_at_the_same_moment_start_one_conversation() {
    let app = Arc::new(spawn_app().await);
    // Several pairs, each racing, to give a race a real chance.
    for round in 0..5 {
        let ada = app.create_user(&format!("ada{round}")).await;
        let bob = app.create_user(&format!("bob{round}")).await;
        let barrier = Arc::new(Barrier::new(2));
        let sends = [(ada.clone(), bob.clone()), (bob.clone(), ada.clone())].map(|(from, to)| {
            let (app, barrier) = (app.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                app.send(&from.token, &to.id, &format!("hi {}", to.username)).await
            })
        });
        let [first, second] = sends;
        let first = first.await.unwrap();
        let second = second.await.unwrap();
        let first = first.data(StatusCode::CREATED).clone();
        let second = second.data(StatusCode::CREATED).clone();

        assert_eq!(first["conversationId"], second["conversationId"], "round {round}");
        for user in [&ada, &bob] {
            let list = app.conversations(&user.token).await;
            let list = list.data(StatusCode::OK).as_array().unwrap().clone();
            assert_eq!(list.len(), 1, "round {round}: {list:?}");
            assert_eq!(list[0]["_id"], first["conversationId"]);
        }
        let history = app.get_messages(&ada.token, &bob.id, &[]).await;
        let history = history.data(StatusCode::OK);
        assert_eq!(history["_id"], first["conversationId"]);
        assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_sent_at_once_are_all_kept_in_a_consistent_order() {
    let app = Arc::new(spawn_app().await);
    let ada = app.create_user("ada").await;
    let bob = app.create_user("bob").await;
    let mut socket = app.connect_ws(&bob.token).await;

    let sends = (0..30).map(|i| {
        let (app, from, to) = (app.clone(), ada.clone(), bob.clone());
        tokio::spawn(async move { app.send_ok(&from, &to, &format!("burst {i}")).await })
    });
    let sent = futures_util::future::join_all(sends).await;
    let sent_ids: HashSet<String> =
        sent.into_iter().map(|m| m.unwrap()["_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(sent_ids.len(), 30);

    let history = app.get_messages(&bob.token, &ada.id, &[]).await;
    let messages = history.data(StatusCode::OK)["messages"].as_array().unwrap().clone();
    let ids: Vec<String> = messages.iter().map(|m| m["_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), sent_ids);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "the history is in id order: {ids:?}");

    let mut announced = HashSet::new();
    for _ in 0..30 {
        let event = socket.next_event("newMessage", tests::EVENT_TIMEOUT).await;
        announced.insert(event["_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(announced, sent_ids, "each message announced once");
}
