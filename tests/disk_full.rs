//! A full disk under PostgreSQL's tables (a small loop-mounted ext4 image
//! holding the test database's tablespace; the WAL stays on the big disk):
//! webhooks get 503 — WhatsApp delivers again —, nothing acknowledged is
//! lost, and once space returns everything goes on by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::app::{text_message, TestApp};
use support::TestDb;
use switchboard::db::schema::dead_letters;

/// A 32 MB ext4 file system on a loop device, mounted for the test.
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
        // No blocks reserved for root: the filler takes them all.
        run("mkfs.ext4", &["-q", "-F", "-m", "0", image.to_str().unwrap()]);
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), mount.to_str().unwrap()],
        );
        let space = mount.join("tablespace");
        std::fs::create_dir(&space).unwrap();
        if let Some((uid, gid)) = support::server_owner() {
            std::os::unix::fs::chown(&space, Some(uid), Some(gid)).unwrap();
        }
        Self { mount, _dir: dir }
    }

    fn tablespace(&self) -> PathBuf {
        self.mount.join("tablespace")
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Takes every free block (off the runtime: the server keeps serving).
    async fn fill(&self) {
        let filler = self.filler();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::create(filler).unwrap();
            let block = vec![0u8; 64 * 1024];
            loop {
                // ext4 takes the blocks at write time: the write that
                // finds none fails.
                match f.write_all(&block) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                    Err(e) => panic!("filling the disk: {e}"),
                }
            }
            let _ = f.sync_all();
        })
        .await
        .unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazily: the server may still hold files of the tablespace.
        let _ = Command::new("umount").args(["-l"]).arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str]) {
    // Administrators' tools may be off a plain user's PATH.
    let program = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| format!("{dir}/{program}"))
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| program.to_string());
    let program = program.as_str();
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (e2fsprogs, util-mount; as root): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {} (the fault tests run as root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn letters(db: &TestDb) -> i64 {
    dead_letters::table
        .count()
        .get_result(&mut db.admin().await)
        .await
        .unwrap()
}

/// Delivers `id` (saying `id`) until it is stored (200), within `deadline`.
async fn until_stored(app: &TestApp, phone: &str, id: &str, deadline: Instant) {
    loop {
        let r = app.deliver_value(vec![text_message(phone, id, id)], vec![]).await;
        if r.status() == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{id} was never stored after space returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[actix_web::test]
async fn a_full_disk_gets_503s_loses_nothing_acknowledged_and_recovers_when_space_returns() {
    let disk = SmallDisk::mount();
    let tablespace = format!("small_{}", std::process::id());
    let db = TestDb::migrated_in(&tablespace, &disk.tablespace()).await;
    let app = TestApp::spawn_with(&db, |s| s.engine.resume_interval_s = 1, |b| b).await;
    let phones: Vec<String> = (0..4).map(|i| format!("52155133300{i:02}")).collect();
    app.say(&phones[0], "wamid.before", "wamid.before").await;

    disk.fill().await;
    // Messages go on arriving until the tables cannot grow: each answer is
    // 200 (stored) or 503 (not stored; delivered again below).
    let (mut stored, mut refused) = (vec![("wamid.before".to_string(), 0)], Vec::new());
    for n in 0..600 {
        let (id, phone) = (format!("wamid.full{n}"), n % phones.len());
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            app.deliver_value(vec![text_message(&phones[phone], &id, &id)], vec![]),
        )
        .await
        .expect("a webhook hung on a full disk");
        match r.status().as_u16() {
            200 => stored.push((id, phone)),
            503 => refused.push((id, phone)),
            other => panic!("{id}: {other} on a full disk"),
        }
        if refused.len() >= 5 {
            break;
        }
    }
    assert!(!refused.is_empty(), "the full disk never refused a delivery");

    disk.free();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (id, phone) in &refused {
        until_stored(&app, &phones[*phone], id, deadline).await;
    }
    // What was acknowledged before is applied too (resumed if its step
    // could not commit while the disk was full).
    while db.unprocessed().await > 0 {
        assert!(Instant::now() < deadline, "acknowledged messages were never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.engine.wait_idle().await;
    assert_eq!(letters(&db).await, 0, "nothing became a dead letter");
    for (p, phone) in phones.iter().enumerate() {
        // Accepted in this order: those stored while the disk filled, then
        // those refused and stored after it was freed. Each says its id.
        let accepted: Vec<&str> = stored
            .iter()
            .chain(&refused)
            .filter(|(_, at)| *at == p)
            .map(|(id, _)| id.as_str())
            .collect();
        let applied = support::user_messages(&db, phone).await;
        assert_eq!(
            applied, accepted,
            "{phone}: every message applied once, in acceptance order"
        );
    }
    app.stop().await;
    drop(disk);
}
