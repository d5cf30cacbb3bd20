//! The event feed: a subscriber that reconnects with `Last-Event-ID` (or
//! `?after=`) receives exactly the events it missed, in order — also when
//! another process produced them and while the presence connection that
//! relays events between processes was being killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use support::app::{text_message, TestApp};
use support::TestDb;

/// A subscriber's view of one SSE stream.
struct Sub {
    resp: reqwest::Response,
    buf: String,
}

/// One event as a subscriber saw it: its id, kind and data.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    id: String,
    kind: String,
    data: Value,
}

impl Sub {
    async fn open(app: &TestApp, path: &str, last: Option<&str>) -> Self {
        let mut req = app.client.get(app.url(path));
        if let Some(id) = last {
            req = req.header("Last-Event-ID", id);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The next event with an id (keepalives and live-only frames skipped).
    async fn next(&mut self) -> Seen {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                };
                if let (Some(id), Some(kind), Some(data)) = (field("id:"), field("event:"), field("data:")) {
                    return Seen {
                        id,
                        kind,
                        data: serde_json::from_str(&data).unwrap(),
                    };
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.resp.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()
                .expect("the stream is open");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Seen> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next().await);
        }
        out
    }
}

/// Every event in the log, in feed order: (event id, conversation).
async fn logged(db: &TestDb) -> Vec<(String, String)> {
    use switchboard::db::schema::events;
    events::table
        .order((events::release, events::id))
        .select((events::event_key, events::phone))
        .load(&mut db.admin().await)
        .await
        .unwrap()
}

async fn settle(apps: &[&TestApp]) {
    for a in apps {
        a.engine.wait_idle().await;
        a.engine.outbox().wait_drained().await;
    }
}

/// Kills every presence connection of the database (each holds its
/// process's advisory lock, and listens for the other processes' events).
async fn kill_listeners(db: &TestDb) -> usize {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let killed: N = diesel::sql_query(format!(
        "SELECT count(pg_terminate_backend(a.pid)) AS n FROM pg_stat_activity a \
         JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' WHERE a.datname = '{}'",
        db.name
    ))
    .get_result(&mut db.admin().await)
    .await
    .unwrap();
    killed.n as usize
}

#[actix_web::test]
async fn a_subscriber_that_reconnects_receives_exactly_what_it_missed_from_any_process() {
    let db = TestDb::migrated().await;
    let a = TestApp::spawn(&db, |_| {}, None).await;
    let b = TestApp::spawn(&db, |_| {}, None).await;
    let (p1, p2) = ("5215511110001", "5215511110002");
    // Subscribed from the head: hears what happens from now on.
    let mut steady = Sub::open(&a, "/api/events", None).await;
    let mut leaving = Sub::open(&a, "/api/events", None).await;
    a.deliver_value(vec![text_message(p1, "wamid.f1", "hola")], vec![])
        .await;
    settle(&[&a]).await;
    let before = logged(&db).await.len();
    assert!(before >= 2, "a message and its reply: {before}");
    let heard = leaving.take(before).await;
    let last = heard.last().unwrap().id.clone();
    drop(leaving);
    // While it is away: events of both processes, and the presence
    // connections killed between them.
    b.deliver_value(vec![text_message(p2, "wamid.f2", "hola")], vec![])
        .await;
    settle(&[&b]).await;
    assert_eq!(kill_listeners(&db).await, 2, "one presence connection per process");
    b.deliver_value(vec![text_message(p2, "wamid.f3", "refrigerador")], vec![])
        .await;
    a.deliver_value(vec![text_message(p1, "wamid.f4", "vehiculo")], vec![])
        .await;
    settle(&[&a, &b]).await;
    let all = logged(&db).await;
    let missed: Vec<String> = all[before..].iter().map(|(k, _)| k.clone()).collect();
    assert!(missed.len() >= 6, "three messages and their replies: {}", missed.len());
    // Back with its last id, on the other process: exactly the missed events.
    let mut back = Sub::open(&b, "/api/events", Some(&last)).await;
    let resumed = back.take(missed.len()).await;
    let ids: Vec<String> = resumed
        .iter()
        .map(|s| s.data["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, missed, "every missed event, once, in the log's order");
    // The one that never left heard the same, in the same order.
    let steady_heard = steady.take(all.len()).await;
    assert_eq!(steady_heard[before..], resumed[..]);
    assert!(
        steady_heard.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase along the feed"
    );
    // Per conversation, in the order the conversation's versions were written.
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for s in steady_heard.iter().filter(|s| s.kind == "message.received") {
        let key = s.data["conversation"]["key"].as_str().unwrap().to_string();
        versions
            .entry(key)
            .or_default()
            .push(s.data["data"]["version"].as_i64().unwrap());
    }
    for (c, v) in &versions {
        assert!(v.windows(2).all(|w| w[0] < w[1]), "{c}: {v:?}");
    }
    // `?after=` is the same position, for clients that cannot set headers;
    // one conversation's stream holds its events only.
    let mut p2_only = Sub::open(&a, &format!("/api/conversations/{p2}/events?after={last}"), None).await;
    let p2_missed = all[before..].iter().filter(|(_, c)| c == p2).count();
    let p2_heard = p2_only.take(p2_missed).await;
    assert!(p2_heard.iter().all(|s| s.data["conversation"]["key"] == p2));
    a.stop().await;
    b.stop().await;
}

#[actix_web::test]
async fn a_position_that_is_not_one_is_refused() {
    let db = TestDb::migrated().await;
    let a = TestApp::spawn(&db, |_| {}, None).await;
    let r = a
        .client
        .get(a.url("/api/events"))
        .header("Last-Event-ID", "not-an-id")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    a.stop().await;
}

#[actix_web::test]
async fn an_event_of_an_older_transaction_committed_later_is_not_passed_over() {
    use diesel_async::AsyncConnection;
    let db = TestDb::migrated().await;
    let a = TestApp::spawn(&db, |_| {}, None).await;
    let mut sub = Sub::open(&a, "/api/events", None).await;
    // A transaction takes its id and writes an event first, and commits last.
    let mut held = db.admin().await;
    diesel::sql_query("BEGIN").execute(&mut held).await.unwrap();
    diesel::sql_query(
        "INSERT INTO events (phone, kind, event_key, payload, release) \
         VALUES ('5215599990000', 'held', 'evt_held', '{\"id\": \"evt_held\"}', pg_current_xact_id()::text::int8 + 1)",
    )
    .execute(&mut held)
    .await
    .unwrap();
    // Newer transactions commit events meanwhile: none may be read past the held one.
    a.deliver_value(vec![text_message("5215511110009", "wamid.h1", "hola")], vec![])
        .await;
    settle(&[&a]).await;
    let early = tokio::time::timeout(Duration::from_millis(600), sub.next()).await;
    assert!(
        early.is_err(),
        "an event was read while an older transaction was open: {early:?}"
    );
    diesel::sql_query("COMMIT").execute(&mut held).await.unwrap();
    let all = logged(&db).await;
    let heard = sub.take(all.len()).await;
    assert_eq!(heard[0].kind, "held", "the older transaction's event comes first");
    let ids: Vec<String> = heard
        .iter()
        .map(|s| s.data["id"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(ids, expected, "every event once, in the feed's order");
    drop(held);
    let _ = AsyncPgConnection::establish;
    a.stop().await;
}
