//! A scratch database on the MongoDB server the tests run against.
//!
//! Needs a MongoDB replica set (or SecantusDB, see `scripts/start-mongodb.sh`) at
//! `CHAT_TEST_MONGODB_URL`, by default `mongodb://127.0.0.1:27017/?retryWrites=false`.

#![allow(dead_code)] // each test file uses its own part

use std::time::Duration;

use chat_mongo::{MongoOptions, MongoStore};
use domain::MessageId;
use mongodb::bson::Document;

pub fn server_url() -> String {
    std::env::var("CHAT_TEST_MONGODB_URL")
        .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/?retryWrites=false".into())
}

/// The server URL naming `database`, its options kept.
pub fn url_for(database: &str) -> String {
    let url = server_url();
    let (base, query) = url.split_once('?').map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap_or(("mongodb", base));
    let hosts = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(query) => format!("{scheme}://{hosts}/{database}?{query}"),
        None => format!("{scheme}://{hosts}/{database}"),
    }
}

/// A database of its own, dropped at the end (also when the test fails).
pub struct Scratch {
    pub client: mongodb::Client,
    pub name: String,
}

impl Scratch {
    pub async fn new() -> Self {
        let name = format!("chat_scratch_{}", uuid_like());
        let client = mongodb::Client::with_uri_str(server_url()).await.expect("a MongoDB URL");
        Self { client, name }
    }

    pub fn messages(&self) -> mongodb::Collection<Document> {
        self.client.database(&self.name).collection("messages")
    }

    pub async fn connect(&self) -> MongoStore {
        MongoStore::connect(&MongoOptions {
            url: url_for(&self.name),
            acquire_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap_or_else(|e| panic!("connecting (is MongoDB running? see scripts/start-mongodb.sh): {e:#}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let database = self.client.database(&self.name);
        // Dropping needs the runtime the test runs on, which is still there during `drop`.
        let _ = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map(|rt| {
                        rt.block_on(async {
                            let _ = tokio::time::timeout(Duration::from_secs(5), database.drop()).await;
                        })
                    })
                })
                .join()
        });
    }
}

pub fn uuid_like() -> String {
    MessageId::generate().as_str().replace('-', "")
}
