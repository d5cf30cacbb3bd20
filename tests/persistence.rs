//! The persistence primitives against a real PostgreSQL: migrations, the
//! versioned write, race-free create, atomic dedupe.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::json;
use support::rows::{commit_batch, Rows, SessionUpdate, Versioned};
use support::TestDb;
use switchboard::db::{self, migrations, NewDelivery};

const PHONE: &str = "5215512341234";

async fn table_names(db: &TestDb) -> Vec<String> {
    #[derive(QueryableByName)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        table_name: String,
    }
    let mut conn = db.admin().await;
    let mut names: Vec<String> = diesel::sql_query(
        "SELECT table_name::text AS table_name FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'",
    )
    .load::<T>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|t| t.table_name)
    .collect();
    names.sort();
    names
}

#[tokio::test]
async fn migrations_go_all_up_all_down_and_all_up_again() {
    let db = TestDb::empty().await;
    let url = db.url.expose();
    let applied = migrations::run_pending(url).await.unwrap();
    assert!(!applied.is_empty());
    assert!(migrations::status(url).await.unwrap().iter().all(|m| m.applied));
    assert_eq!(
        table_names(&db).await,
        [
            "contact_links",
            "dead_letters",
            "erasures",
            "events",
            "inbox",
            "media",
            "messages",
            "outbox",
            "outcomes",
            "send_budget",
            "sessions",
            "template_status",
            "timers"
        ]
    );

    let reverted = migrations::revert_all(url).await.unwrap();
    assert_eq!(reverted.len(), applied.len());
    assert!(migrations::status(url).await.unwrap().iter().all(|m| !m.applied));
    assert!(table_names(&db).await.is_empty(), "down.sql left tables behind");

    assert_eq!(migrations::run_pending(url).await.unwrap(), applied);
    assert!(
        migrations::run_pending(url).await.unwrap().is_empty(),
        "second run applies nothing"
    );
}

#[tokio::test]
async fn every_table_has_a_comment_and_the_phone_in_its_primary_key() {
    #[derive(QueryableByName, Debug)]
    struct T {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        commented: bool,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        phone_in_pk: bool,
    }
    let db = TestDb::migrated().await;
    let rows: Vec<T> = diesel::sql_query(
        "SELECT c.relname::text AS name, obj_description(c.oid, 'pg_class') IS NOT NULL AS commented, \
                EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
                        WHERE i.indrelid = c.oid AND i.indisprimary AND a.attname = 'phone') AS phone_in_pk \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '__diesel_schema_migrations'",
    )
    .load(&mut db.admin().await)
    .await
    .unwrap();
    assert_eq!(rows.len(), 13);
    for t in rows {
        // The send budget is the deployment's, per business number and
        // second, and template statuses are the business account's — no
        // conversation's data (reference tables, sharded).
        let per_conversation = !["send_budget", "template_status"].contains(&t.name.as_str());
        assert!(
            t.commented && (t.phone_in_pk || !per_conversation),
            "table {}: {t:?}",
            t.name
        );
    }
}

#[tokio::test]
async fn two_writers_with_the_same_version_one_wins_the_other_gets_a_conflict() {
    let test = TestDb::migrated().await;
    let db = test.database();
    let s = db.load_or_create_session(PHONE, "inicio").await.unwrap();
    assert_eq!(s.version, 0);

    let data_a = json!({"intent": "refrigerador"});
    let data_b = json!({"intent": "vehiculo"});
    let a = SessionUpdate {
        flow_state: "pide_sap",
        data: &data_a,
        handoff: false,
    };
    let b = SessionUpdate {
        flow_state: "pide_empleado",
        data: &data_b,
        handoff: false,
    };
    let (ra, rb) = tokio::join!(db.update_session(PHONE, 0, &a), db.update_session(PHONE, 0, &b));
    let (winner, loser) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(winner.version, 1);
    match loser {
        Versioned::Conflict { expected, actual } => {
            assert_eq!(expected, 0);
            assert_eq!(actual, Some(1));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The stored state is the winner's, untouched by the loser.
    let stored = db.load_session(PHONE).await.unwrap().unwrap();
    assert_eq!(stored.flow_state, winner.flow_state);
    assert_eq!(stored.version, 1);
}

#[tokio::test]
async fn a_versioned_write_to_a_missing_session_is_a_conflict_with_no_actual_version() {
    let db = TestDb::migrated().await.database();
    let data = json!({});
    let update = SessionUpdate {
        flow_state: "x",
        data: &data,
        handoff: false,
    };
    match db.update_session("5215500000000", 0, &update).await {
        Err(Versioned::Conflict { actual: None, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn versions_are_contiguous_over_many_writes() {
    let db = TestDb::migrated().await.database();
    let mut s = db.load_or_create_session(PHONE, "inicio").await.unwrap();
    for i in 0..50 {
        let data = json!({ "n": i });
        s = db
            .update_session(
                PHONE,
                s.version,
                &SessionUpdate {
                    flow_state: "loop",
                    data: &data,
                    handoff: false,
                },
            )
            .await
            .unwrap();
        assert_eq!(s.version, i + 1);
    }
    assert_eq!(s.data, json!({"n": 49}));
}

#[tokio::test]
async fn concurrent_creates_of_one_session_all_get_the_same_row() {
    let db = TestDb::migrated().await.database_with(|s| s.max_connections = 10);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.load_or_create_session(PHONE, "inicio").await })
        })
        .collect();
    let mut created_at = None;
    for t in tasks {
        let s = t.await.unwrap().unwrap();
        assert_eq!(s.version, 0);
        assert_eq!(*created_at.get_or_insert(s.created_at), s.created_at);
    }
}

#[tokio::test]
async fn a_hundred_concurrent_deliveries_of_one_message_register_one_first_and_count_a_hundred() {
    let test = TestDb::migrated().await;
    let db = Arc::new(test.database_with(|s| s.max_connections = 16));
    let payload = Arc::new(json!({"text": {"body": "Hola, mi refri no enfría ❄️ / urgente"}}));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let db = db.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                db.register_delivery(&NewDelivery {
                    phone: PHONE,
                    provider_message_id: "wamid.HBgNNTIxNTUxMjM0MTIzNBUCABIYFjNFQjA=",
                    payload: &payload,
                    contact_name: None,
                    contact_username: None,
                })
                .await
            })
        })
        .collect();
    let mut firsts = 0;
    let mut counts = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        firsts += usize::from(r.first);
        counts.push(r.delivery_count);
        ids.insert(r.inbox_id);
        assert!(!r.processed);
    }
    assert_eq!(firsts, 1, "exactly one delivery is the first");
    assert_eq!(ids.len(), 1, "all deliveries land on one inbox row");
    counts.sort();
    assert_eq!(
        counts,
        (1..=100).collect::<Vec<_>>(),
        "every delivery got its own count"
    );
    let mut conn = test.admin().await;
    let row = db::inbox::get(&mut conn, PHONE, "wamid.HBgNNTIxNTUxMjM0MTIzNBUCABIYFjNFQjA=")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.delivery_count, 100);
    assert_eq!(row.payload, *payload, "non-ASCII text and '/' survive untouched");
}

#[tokio::test]
async fn a_batch_of_registrations_dedupes_like_single_ones_and_answers_in_input_order() {
    use switchboard::db::inbox::{register_batch, Lease, OwnedDelivery};
    let lease = Lease {
        holder: 1,
        millis: 30_000,
    };
    let test = TestDb::migrated().await;
    let mut conn = test.admin().await;
    let d = |phone: &str, id: &str| OwnedDelivery {
        phone: phone.into(),
        provider_message_id: id.into(),
        payload: json!({"id": id}),
        contact_name: None,
        contact_username: None,
        traceparent: None,
    };
    let first = register_batch(
        &mut conn,
        &[d("5215500000002", "w.b"), d("5215500000001", "w.a")],
        lease,
    )
    .await
    .unwrap();
    assert!(first.iter().all(|r| r.first && r.delivery_count == 1));
    assert!(first[0].inbox_id != first[1].inbox_id);
    let again = register_batch(
        &mut conn,
        &[d("5215500000001", "w.a"), d("5215500000003", "w.c")],
        lease,
    )
    .await
    .unwrap();
    assert_eq!(
        (again[0].first, again[0].delivery_count, again[0].inbox_id),
        (false, 2, first[1].inbox_id)
    );
    assert!(again[1].first);
    // One phone's new messages are numbered in the order they came (the
    // order they are applied in), whatever their provider ids.
    let arrival = register_batch(
        &mut conn,
        &[
            d("5215500000004", "w.9"),
            d("5215500000004", "w.5"),
            d("5215500000001", "w.a"),
            d("5215500000004", "w.1"),
        ],
        lease,
    )
    .await
    .unwrap();
    let ids: Vec<i64> = [0, 1, 3].iter().map(|i| arrival[*i].inbox_id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(arrival[2].inbox_id, first[1].inbox_id);
    // Three batches of two sizes, one statement prepared on the connection
    // (`diesel::sql_query` would have prepared it three times, unnamed).
    assert_eq!(prepared(&mut conn, "INSERT INTO inbox").await, 1);
}

#[tokio::test]
async fn an_accepted_message_is_resumed_by_another_process_only_when_its_holder_is_gone_or_late() {
    use switchboard::db::inbox::{register_batch, Lease, OwnedDelivery};
    use switchboard::db::resume::{phones_with_unprocessed, unprocessed};
    use switchboard::db::schema::inbox;
    const PHONE: &str = "5215500000001";
    let test = TestDb::migrated().await;
    let mut conn = test.admin().await;
    // Processes A and B are alive: each holds its presence lock.
    let (a, b, c) = (11_i64, 22_i64, 33_i64);
    let mut alive_a = test.admin().await;
    let mut alive_b = test.admin().await;
    for (holder, conn) in [(a, &mut alive_a), (b, &mut alive_b)] {
        diesel::sql_query(format!("SELECT pg_advisory_lock({holder})"))
            .execute(conn)
            .await
            .unwrap();
    }
    let d = |id: &str| OwnedDelivery {
        phone: PHONE.into(),
        provider_message_id: id.into(),
        payload: json!({"id": id}),
        contact_name: None,
        contact_username: None,
        traceparent: None,
    };
    // A holds w.1 for a long time; A's hold on w.2 has already run out (A is late).
    register_batch(
        &mut conn,
        &[d("w.1")],
        Lease {
            holder: a,
            millis: 60_000,
        },
    )
    .await
    .unwrap();
    register_batch(&mut conn, &[d("w.2")], Lease { holder: a, millis: 0 })
        .await
        .unwrap();
    let ids = |rows: Vec<switchboard::db::resume::PendingInbound>| {
        rows.into_iter().map(|r| r.provider_message_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(unprocessed(&mut conn, PHONE, a, 10).await.unwrap()), ["w.1", "w.2"]);
    assert_eq!(
        ids(unprocessed(&mut conn, PHONE, b, 10).await.unwrap()),
        ["w.2"],
        "another process leaves a live holder's lease alone"
    );
    assert_eq!(phones_with_unprocessed(&mut conn, b, true).await.unwrap(), [PHONE]);
    assert!(
        phones_with_unprocessed(&mut conn, a, false).await.unwrap().is_empty(),
        "a busy process's sweep leaves its own rows to its mailboxes"
    );
    // A redelivery to B does not take a live lease; it takes a lapsed one.
    register_batch(
        &mut conn,
        &[d("w.1"), d("w.2")],
        Lease {
            holder: b,
            millis: 60_000,
        },
    )
    .await
    .unwrap();
    let holders: Vec<(String, i64)> = inbox::table
        .order(inbox::id)
        .select((inbox::provider_message_id, inbox::leased_by))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(holders, vec![("w.1".to_string(), a), ("w.2".to_string(), b)]);
    assert!(unprocessed(&mut conn, PHONE, c, 10).await.unwrap().is_empty());
    assert!(phones_with_unprocessed(&mut conn, c, true).await.unwrap().is_empty());
    // A is gone (its presence lock released): its rows are anyone's at once.
    diesel::sql_query(format!("SELECT pg_advisory_unlock({a})"))
        .execute(&mut alive_a)
        .await
        .unwrap();
    assert_eq!(ids(unprocessed(&mut conn, PHONE, c, 10).await.unwrap()), ["w.1"]);
    assert_eq!(phones_with_unprocessed(&mut conn, c, false).await.unwrap(), [PHONE]);
}

/// A session's state and version.
async fn state_and_version(conn: &mut diesel_async::AsyncPgConnection, phone: &str) -> (String, i64) {
    use switchboard::db::schema::sessions;
    sessions::table
        .filter(sessions::phone.eq(phone))
        .select((sessions::flow_state, sessions::version))
        .first(conn)
        .await
        .unwrap()
}

/// Statements prepared on this connection whose text contains `text`.
async fn prepared(conn: &mut diesel_async::AsyncPgConnection, text: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements \
         WHERE strpos(statement, $1) > 0 AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .bind::<diesel::sql_types::Text, _>(text)
    .get_result(conn)
    .await
    .unwrap();
    count.n
}

/// The bodies of a phone's stored messages, in order.
async fn bodies(conn: &mut diesel_async::AsyncPgConnection, phone: &str) -> Vec<String> {
    use switchboard::db::schema::messages;
    messages::table
        .filter(messages::phone.eq(phone))
        .order(messages::id)
        .select(messages::body)
        .load(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chain_of_steps_of_one_phone_commits_in_order_and_stops_at_the_first_it_cannot_apply() {
    use switchboard::db::inbox::{register_batch, Lease, OwnedDelivery};
    use switchboard::db::schema::{inbox, sessions};
    use switchboard::db::steps::{NewMessage, StepWrite, WriteOutcome};
    const OTHER: &str = "5215500000009";
    let test = TestDb::migrated().await;
    let db = test.database();
    let mut conn = test.admin().await;
    db.load_or_create_session(PHONE, "inicio").await.unwrap();
    db.load_or_create_session(OTHER, "inicio").await.unwrap();
    let lease = Lease {
        holder: 1,
        millis: 30_000,
    };
    let d = |id: &str| OwnedDelivery {
        phone: PHONE.into(),
        provider_message_id: id.into(),
        payload: json!({"id": id}),
        contact_name: None,
        contact_username: None,
        traceparent: None,
    };
    let regs = register_batch(&mut conn, &[d("w.1"), d("w.2"), d("w.3"), d("w.4"), d("w.5")], lease)
        .await
        .unwrap();
    let ids: Vec<i64> = regs.iter().map(|r| r.inbox_id).collect();
    let step = |phone: &str, expected: i64, state: &str, inbox_id: Option<i64>| StepWrite {
        phone: phone.into(),
        expected_version: expected,
        create_as: None,
        flow_state: state.into(),
        data: json!({"at": state}),
        handoff: false,
        stepped: true,
        inbox_id,
        dedupe_key: None,
        messages: vec![NewMessage {
            phone: phone.into(),
            direction: "in",
            origin: "user",
            body: state.into(),
            inbox_id,
            provider_message_id: None,
            status: "received",
            outbox_key: None,
            author: None,
        }],
        outbox: Vec::new(),
        outcomes: Vec::new(),
        media: Vec::new(),
        time: Default::default(),
    };
    // Three steps of one phone and one of another, in one transaction.
    let out = commit_batch(
        &mut conn,
        &[
            step(PHONE, 0, "s1", Some(ids[0])),
            step(OTHER, 0, "o1", None),
            step(PHONE, 1, "s2", Some(ids[1])),
            step(PHONE, 2, "s3", Some(ids[2])),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        [
            WriteOutcome::Committed { version: 1 },
            WriteOutcome::Committed { version: 1 },
            WriteOutcome::Committed { version: 2 },
            WriteOutcome::Committed { version: 3 },
        ]
    );
    let (state, version, data): (String, i64, serde_json::Value) = sessions::table
        .filter(sessions::phone.eq(PHONE))
        .select((sessions::flow_state, sessions::version, sessions::data))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((state.as_str(), version, data), ("s3", 3, json!({"at": "s3"})));
    assert_eq!(bodies(&mut conn, PHONE).await, ["s1", "s2", "s3"]);
    let done: i64 = inbox::table
        .filter(inbox::processed_at.is_not_null())
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(done, 3);
    // A chain whose second step repeats an applied message: the first
    // commits, the rest of the chain is refused and nothing of it is written.
    let out = commit_batch(
        &mut conn,
        &[
            step(PHONE, 3, "s4", Some(ids[3])),
            step(PHONE, 4, "again", Some(ids[2])),
            step(PHONE, 5, "s5", Some(ids[4])),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        [
            WriteOutcome::Committed { version: 4 },
            WriteOutcome::AlreadyApplied,
            WriteOutcome::Conflict { actual: Some(3) },
        ]
    );
    // A chain built on a stale version: nothing of it commits.
    let out = commit_batch(
        &mut conn,
        &[step(PHONE, 3, "stale", Some(ids[4])), step(PHONE, 4, "stale2", None)],
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        [
            WriteOutcome::Conflict { actual: Some(4) },
            WriteOutcome::Conflict { actual: Some(4) },
        ]
    );
    assert_eq!(state_and_version(&mut conn, PHONE).await, ("s4".to_string(), 4));
    assert_eq!(bodies(&mut conn, PHONE).await, ["s1", "s2", "s3", "s4"]);
    // A later message while an earlier one waits unapplied (accepted by
    // another process, say): behind it, nothing written; the two as a
    // chain in acceptance order commit.
    let later = register_batch(&mut conn, &[d("w.6")], lease).await.unwrap()[0].inbox_id;
    assert_eq!(
        commit_batch(&mut conn, &[step(PHONE, 4, "s6", Some(later))])
            .await
            .unwrap(),
        [WriteOutcome::Behind { earlier: ids[4] }]
    );
    assert_eq!(state_and_version(&mut conn, PHONE).await, ("s4".to_string(), 4));
    assert_eq!(
        commit_batch(
            &mut conn,
            &[step(PHONE, 4, "s5", Some(ids[4])), step(PHONE, 5, "s6", Some(later))]
        )
        .await
        .unwrap(),
        [
            WriteOutcome::Committed { version: 5 },
            WriteOutcome::Committed { version: 6 }
        ]
    );
    assert_eq!(bodies(&mut conn, PHONE).await, ["s1", "s2", "s3", "s4", "s5", "s6"]);
    // One message twice in one chain: the second is a duplicate.
    let next = register_batch(&mut conn, &[d("w.7")], lease).await.unwrap()[0].inbox_id;
    assert_eq!(
        commit_batch(
            &mut conn,
            &[step(PHONE, 6, "s7", Some(next)), step(PHONE, 7, "s7 again", Some(next))]
        )
        .await
        .unwrap(),
        [WriteOutcome::Committed { version: 7 }, WriteOutcome::AlreadyApplied]
    );
    // Batches of every size went in through one prepared statement.
    assert_eq!(prepared(&mut conn, "INSERT INTO messages").await, 1);
    // A phone without a session: its first step creates it, in the step's
    // transaction; a second writer that also started from "no session"
    // finds version 1 and gets a conflict.
    const NEW: &str = "5215500000077";
    let first = StepWrite {
        create_as: Some("inicio".into()),
        ..step(NEW, 0, "n1", None)
    };
    assert_eq!(
        commit_batch(&mut conn, std::slice::from_ref(&first)).await.unwrap(),
        [WriteOutcome::Committed { version: 1 }]
    );
    assert_eq!(
        commit_batch(&mut conn, &[first]).await.unwrap(),
        [WriteOutcome::Conflict { actual: Some(1) }]
    );
    assert_eq!(state_and_version(&mut conn, NEW).await, ("n1".to_string(), 1));
    // Without `create_as`, a missing session is a conflict, as before.
    assert_eq!(
        commit_batch(&mut conn, &[step("5215500000078", 0, "x", None)])
            .await
            .unwrap(),
        [WriteOutcome::Conflict { actual: None }]
    );
}

#[tokio::test]
async fn a_step_can_claim_its_outbox_rows_at_insert_and_the_claim_query_leaves_them_until_given_back() {
    use switchboard::db::outbox::{claim, give_back};
    use switchboard::db::schema::outbox;
    use switchboard::db::steps::{commit_batch_claiming, NewOutbox, StepWrite};
    let test = TestDb::migrated().await;
    let mut conn = test.admin().await;
    let step = |phone: &str, key: &str| StepWrite {
        phone: phone.into(),
        expected_version: 0,
        create_as: Some("inicio".into()),
        flow_state: "menu".into(),
        data: json!({}),
        handoff: false,
        stepped: true,
        inbox_id: None,
        dedupe_key: Some(key.into()),
        messages: Vec::new(),
        outbox: vec![NewOutbox {
            phone: phone.into(),
            kind: "text",
            payload: json!({"text": format!("reply {key}")}),
            idempotency_key: key.into(),
            traceparent: None,
        }],
        outcomes: Vec::new(),
        media: Vec::new(),
        time: Default::default(),
    };
    // Claimed at insert: returned with their payloads, one attempt counted,
    // leased (the claim query, as another process runs it, skips them).
    let (outcomes, claimed) = commit_batch_claiming(
        &mut conn,
        &[step("5215500000101", "k.1"), step("5215500000102", "k.2")],
        Some(60_000),
    )
    .await
    .unwrap();
    assert_eq!(outcomes.len(), 2);
    let mut got: Vec<(String, serde_json::Value, i32)> = claimed
        .iter()
        .map(|c| (c.idempotency_key.clone(), c.payload.clone(), c.attempts))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("k.1".to_string(), json!({"text": "reply k.1"}), 1),
            ("k.2".to_string(), json!({"text": "reply k.2"}), 1)
        ]
    );
    let stored: Vec<(String, i32)> = outbox::table
        .order(outbox::idempotency_key)
        .select((outbox::status, outbox::attempts))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, vec![("sending".to_string(), 1), ("sending".to_string(), 1)]);
    assert!(claim(&mut conn, 10, 60_000).await.unwrap().is_empty());
    // Without a claim they are pending, for the claim query.
    let (_, none) = commit_batch_claiming(&mut conn, &[step("5215500000103", "k.3")], None)
        .await
        .unwrap();
    assert!(none.is_empty());
    let due = claim(&mut conn, 10, 60_000).await.unwrap();
    assert_eq!(
        due.iter().map(|c| c.idempotency_key.as_str()).collect::<Vec<_>>(),
        ["k.3"]
    );
    // Given back (a dispatcher stopping before sending them): due at once,
    // their attempt uncounted.
    give_back(&mut conn, &claimed).await.unwrap();
    let mut again: Vec<(String, i32)> = claim(&mut conn, 10, 60_000)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.idempotency_key, c.attempts))
        .collect();
    again.sort();
    assert_eq!(again, vec![("k.1".to_string(), 1), ("k.2".to_string(), 1)]);
}

/// The step batch sends its locks and its "already applied" checks in one
/// round trip. A check must still see what a transaction holding the
/// session's lock committed while the batch waited for it.
#[tokio::test]
async fn a_batch_waiting_for_a_session_lock_sees_what_the_holder_committed() {
    use switchboard::db::inbox::{register_batch, Lease, OwnedDelivery};
    use switchboard::db::steps::{StepWrite, WriteOutcome};
    let test = TestDb::migrated().await;
    let db = test.database();
    db.load_or_create_session(PHONE, "inicio").await.unwrap();
    let mut conn = test.admin().await;
    let lease = Lease {
        holder: 1,
        millis: 30_000,
    };
    let delivery = OwnedDelivery {
        phone: PHONE.into(),
        provider_message_id: "w.locked".into(),
        payload: json!({"id": "w.locked"}),
        contact_name: None,
        contact_username: None,
        traceparent: None,
    };
    let inbox_id = register_batch(&mut conn, &[delivery], lease).await.unwrap()[0].inbox_id;
    // Another writer holds the session's lock and marks the message applied.
    let mut holder = test.admin().await;
    diesel::sql_query("BEGIN").execute(&mut holder).await.unwrap();
    diesel::sql_query(format!("SELECT 1 FROM sessions WHERE phone = '{PHONE}' FOR UPDATE"))
        .execute(&mut holder)
        .await
        .unwrap();
    diesel::sql_query(format!(
        "UPDATE inbox SET processed_at = now() WHERE phone = '{PHONE}' AND id = {inbox_id}"
    ))
    .execute(&mut holder)
    .await
    .unwrap();
    let write = StepWrite {
        phone: PHONE.into(),
        expected_version: 0,
        create_as: None,
        flow_state: "menu".into(),
        data: json!({}),
        handoff: false,
        stepped: true,
        inbox_id: Some(inbox_id),
        dedupe_key: None,
        messages: Vec::new(),
        outbox: Vec::new(),
        outcomes: Vec::new(),
        media: Vec::new(),
        time: Default::default(),
    };
    let mut batch_conn = test.admin().await;
    let batch = tokio::spawn(async move { commit_batch(&mut batch_conn, &[write]).await.unwrap() });
    // Until the batch waits for the lock (bounded).
    let waiting = async {
        loop {
            let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT count(*) FROM pg_stat_activity \
                  WHERE datname = current_database() AND wait_event_type = 'Lock')",
            ))
            .get_result(&mut conn)
            .await
            .unwrap();
            if n > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("the batch waits for the session's lock");
    diesel::sql_query("COMMIT").execute(&mut holder).await.unwrap();
    assert_eq!(batch.await.unwrap(), vec![WriteOutcome::AlreadyApplied]);
}
