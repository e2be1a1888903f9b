use application::ports::{HealthCheck, RepoError, UserRepository};
use std::time::{Duration, Instant};
#[tokio::test]
async fn scratch() {
    let port: u16 = std::env::var("SCRATCH_PORT").unwrap().parse().unwrap();
    let store = mongo_store::MongoStore::connect(&mongo_store::MongoOptions {
        url: format!("mongodb://127.0.0.1:{port}/scratch?retryWrites=false"),
        acquire_timeout: Duration::from_millis(1500),
    }).await.unwrap();
    store.ping().await.unwrap();
    let pid = std::env::var("SCRATCH_PID").unwrap();
    std::process::Command::new("kill").arg(&pid).status().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let r = store.ping().await;
    println!("ping after kill: {:?} in {:?}", r.as_ref().map_err(|e| format!("{e:#?}").chars().take(300).collect::<String>()), t.elapsed());
    assert!(matches!(r, Err(RepoError::Unavailable(_))));
    let r = store.find_by_id(&domain::UserId::generate()).await;
    println!("find after kill: {:?}", r.is_err());
    assert!(matches!(r, Err(RepoError::Unavailable(_))));
}
