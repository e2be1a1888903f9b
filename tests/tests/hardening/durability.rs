//! No acknowledged message is lost when the process is killed.

use super::*;

async fn acknowledged_messages_survive_kill_9(env: &[(&str, &str)]) {
    let mut process = ServerProcess::start(env).await;
    let api = process.api();
    let alice = api.create_user(&unique("alice")).await;
    let bob = api.create_user(&unique("bob")).await;

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let (api, alice, bob, acknowledged, enough) =
                (api.clone(), alice.clone(), bob.clone(), acknowledged.clone(), enough_tx.clone());
            tokio::spawn(async move {
                for i in 0..13 {
                    let request = api
                        .request(
                            Method::POST,
                            &format!("/api/v1/message/send/{}", bob.id),
                            Some(&alice.token),
                        )
                        .json(&json!({ "message": format!("burst {task}-{i}") }));
                    // Once the process is gone, requests fail: those were never acknowledged.
                    let Ok(response) = request.send().await else {
                        return;
                    };
                    if response.status() != StatusCode::CREATED {
                        return;
                    }
                    let Ok(body) = response.json::<Value>().await else {
                        return;
                    };
                    let id = body["responseData"]["_id"].as_str().expect("_id").to_owned();
                    let count = {
                        let mut acknowledged = acknowledged.lock().unwrap();
                        acknowledged.push(id);
                        acknowledged.len()
                    };
                    if count >= 150 {
                        let _ = enough.try_send(());
                    }
                }
            })
        })
        .collect();
    drop(enough_tx);
    // Killed while the burst is still going: some requests are in flight.
    let _ = tokio::time::timeout(Duration::from_secs(60), enough_rx.recv()).await;
    process.kill().await;
    for task in tasks {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 150, "only {} sends acknowledged", acknowledged.len());

    let process = ServerProcess::start(env).await;
    let api = process.api();
    let stored = api.all_message_ids(&alice, &bob).await;
    let missing: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_sqlite() {
    let dir = TempDir::new("hardening");
    let storage = format!("sqlite://{}", dir.path().join("chat.db").display());
    acknowledged_messages_survive_kill_9(&[
        ("CHAT__STORAGE__URL", &storage),
        ("CHAT__STORAGE__SYNCHRONOUS", "full"),
    ])
    .await;
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_on_postgres() {
    let database = TestDatabase::create(Backend::Postgres).await;
    let StorageSettings::Postgres { url, .. } = &database.settings else { unreachable!() };
    let url = secrecy::ExposeSecret::expose_secret(url).to_owned();
    acknowledged_messages_survive_kill_9(&[
        ("CHAT__STORAGE__BACKEND", "postgres"),
        ("CHAT__STORAGE__URL", &url),
    ])
    .await;
    database.remove().await;
}
