//! Reads from a real streaming replica: a base backup of this test binary's
//! cluster, started as a hot standby that applies commits late
//! (`recovery_min_apply_delay`). A naive read on the replica right after a
//! write is stale; switchboard's read of the same conversation never is,
//! and goes to the replica once it has caught up — per conversation, with
//! two business numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use support::app::TestApp;
use support::TestDb;
use switchboard::config::Secret;
use switchboard::db::replica;

/// Runs a PostgreSQL program as the server's user when we are root.
fn pg(program: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    // The folder initdb really lives in also holds pg_basebackup (PATH may
    // only carry links to the three server programs).
    let initdb = switchboard::db::embedded::find_bin_dir(None).unwrap().join("initdb");
    let bin = std::fs::canonicalize(initdb).unwrap().parent().unwrap().join(program);
    let mut cmd = if support::server_owner().is_some() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A hot standby of the test cluster; stopped on drop.
struct Standby {
    data: PathBuf,
    port: u16,
}

impl Standby {
    fn start(primary_port: u16, password: &str, apply_delay_ms: u64) -> Self {
        let data = support::scratch_dir("replica").join("data");
        let port = support::free_port();
        let d = data.to_string_lossy().into_owned();
        let out = pg(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                switchboard::db::embedded::SUPERUSER,
                "-D",
                &d,
                "-X",
                "stream",
                "-R",
                "--checkpoint=fast",
            ],
            &[("PGPASSWORD", password)],
        );
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let auto = data.join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&auto).unwrap();
        conf.push_str(&format!(
            "port = {port}\nhot_standby = on\nrecovery_min_apply_delay = '{apply_delay_ms}ms'\n"
        ));
        std::fs::write(&auto, conf).unwrap();
        let log = data.join("standby.log").to_string_lossy().into_owned();
        let out = pg("pg_ctl", &["-D", &d, "-l", &log, "-w", "-t", "60", "start"], &[]);
        assert!(
            out.status.success(),
            "standby start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(data.join("standby.log")).unwrap_or_default()
        );
        Self { data, port }
    }

    fn stop(&self) {
        let d = self.data.to_string_lossy().into_owned();
        let _ = pg("pg_ctl", &["-D", &d, "-m", "immediate", "-w", "stop"], &[]);
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.data.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `url` with its port changed.
fn on_port(url: &str, port: u16) -> String {
    let at = url.rfind('@').unwrap();
    let colon = at + url[at..].find(':').unwrap();
    let slash = colon + url[colon..].find('/').unwrap();
    format!("{}:{port}{}", &url[..colon], &url[slash..])
}

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The deployment's two business numbers.
const SALES: &str = "100";
const SUPPORT: &str = "200";

async fn replayed(conn: &mut AsyncPgConnection) -> u64 {
    replica::replay_lsn(conn).await.unwrap().unwrap_or(0)
}

#[actix_web::test]
async fn reads_stay_read_your_writes_on_a_lagging_replica() {
    let cluster = support::cluster().await;
    let db = TestDb::migrated().await;
    let password = {
        let url = db.url.expose();
        let start = url.find("://").unwrap() + 3;
        let user_end = start + url[start..].find(':').unwrap();
        let at = url.rfind('@').unwrap();
        url[user_end + 1..at].to_string()
    };
    let standby = Standby::start(cluster.pg.port(), &password, 400);
    let replica_url = on_port(db.url.expose(), standby.port);
    let app = TestApp::spawn_with(
        &db,
        |s| {
            // One client reads as fast as it can.
            s.api.rate_per_s = 1_000_000;
            s.api.burst = 1_000_000;
            s.whatsapp.phone_number_id = Some(SALES.into());
            s.whatsapp.numbers = vec![switchboard::config::NumberSettings {
                phone_number_id: SUPPORT.into(),
                access_token: None,
                flow: None,
                rate_per_s: None,
                name: None,
                ..Default::default()
            }];
        },
        |b| b.database(db.database_with(|d| d.read_url = Some(Secret::new(replica_url.clone())))),
    )
    .await;
    // Each customer writes first: agents answer inside the 24-hour window.
    for i in 0..100 {
        let (phone, number) = (format!("52155{:08}", i % 50), [SALES, SUPPORT][i / 50]);
        app.engine
            .submit_inbound(switchboard::InboundMessage {
                phone,
                user_id: None,
                business_number: Some(number.into()),
                provider_message_id: format!("wamid.first{i}"),
                payload: support::text("hola"),
                contact_name: None,
                contact_username: None,
            })
            .await
            .unwrap();
    }
    app.engine.wait_idle().await;
    let mut naive = AsyncPgConnection::establish(&replica_url).await.unwrap();
    let mut primary = db.admin().await;
    // The standby has everything written so far before the measured pairs.
    let now = replica::primary_lsn(&mut primary).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replayed(&mut naive).await < now {
        assert!(Instant::now() < deadline, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const PAIRS: usize = 1000;
    let (mut naive_stale, mut our_stale) = (0, 0);
    for i in 0..PAIRS {
        // 50 customers, each on both numbers: 100 conversations.
        let (phone, number) = (format!("52155{:08}", i % 50), [SALES, SUPPORT][(i / 50) % 2]);
        let key = app.engine.numbers().conversation(Some(number), &phone);
        let text = format!("respuesta {i}");
        app.engine
            .submit_agent_message(&key, &text, &format!("pair-{i}"), None)
            .await
            .unwrap();
        // Naive: straight to the replica.
        let seen: N = diesel::sql_query("SELECT count(*) AS n FROM messages WHERE phone = $1 AND body = $2")
            .bind::<Text, _>(&key)
            .bind::<Text, _>(&text)
            .get_result(&mut naive)
            .await
            .unwrap();
        if seen.n == 0 {
            naive_stale += 1;
        }
        // switchboard: the agent API's read of the conversation.
        let got: Value = app
            .client
            .get(app.url(&format!("/api/conversations/{phone}?number={number}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let last = got["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("pair {i}: {got}"))
            .last()
            .map(|m| m["body"].clone());
        if last != Some(Value::String(text)) {
            our_stale += 1;
        }
    }
    let during = app.engine.database().replica().unwrap().stats();
    println!(
        "{PAIRS} write-then-read pairs: naive replica reads stale {naive_stale} ({:.1}%), \
         switchboard reads stale {our_stale}; switchboard read the replica {} times, the primary {} times",
        100.0 * naive_stale as f64 / PAIRS as f64,
        during.replica_reads,
        during.primary_reads
    );
    assert_eq!(our_stale, 0, "read-your-writes holds on every read");
    assert!(
        naive_stale > PAIRS / 2,
        "the replica lags: {naive_stale} stale naive reads"
    );

    // Once the replica has replayed a conversation's last write, its reads go there.
    let now = replica::primary_lsn(&mut primary).await.unwrap();
    while replayed(&mut naive).await < now {
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the standby never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..100 {
        let (phone, number) = (format!("52155{:08}", i % 50), [SALES, SUPPORT][i / 50]);
        let r = app
            .client
            .get(app.url(&format!("/api/conversations/{phone}?number={number}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = app.engine.database().replica().unwrap().stats();
    assert_eq!(
        after.replica_reads - during.replica_reads,
        100,
        "fresh enough: read on the replica"
    );
    app.stop().await;
    drop(standby);
}
