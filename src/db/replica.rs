//! Reads from a streaming replica (`database.read_url`) without losing
//! read-your-writes: a conversation is read on the replica only when the
//! replica has replayed the commit of the conversation's last write (its
//! WAL position, "LSN"); otherwise on the primary.
//!
//! After each group commit the DB actor reads the primary's WAL position
//! and records it for every phone the batch wrote ([`Replica::note`]). A
//! read compares that with the replica's `pg_last_wal_replay_lsn()`. A
//! phone this process has not written since it started (another process
//! may have) is fenced at the primary's current position, read then.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use diesel::sql_types::Text;
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::pool::DbPool;
use crate::db::error::Result;

/// Phones whose fence is kept; past it the map starts over (unknown phones
/// are fenced at the primary's position: slower, never stale).
const MAX_FENCES: usize = 200_000;

/// A WAL position that can never be reached: "read on the primary".
pub const ALWAYS_PRIMARY: u64 = u64::MAX;

pub struct Replica {
    pub(super) pool: DbPool,
    fences: DashMap<String, u64>,
    /// The highest position this process wrote (the fence of list reads).
    highest: AtomicU64,
    replica_reads: AtomicU64,
    primary_reads: AtomicU64,
}

/// Where reads went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReadStats {
    pub replica_reads: u64,
    pub primary_reads: u64,
}

#[derive(QueryableByName)]
struct Lsn {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    lsn: Option<String>,
}

/// `16/B374D848` → a number that orders like the position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

async fn lsn_of(conn: &mut AsyncPgConnection, sql: &str) -> Result<Option<u64>> {
    let r: Lsn = diesel::sql_query(sql).get_result(conn).await?;
    Ok(r.lsn.as_deref().and_then(parse_lsn))
}

/// The primary's current WAL insert position: past the commit record of
/// every transaction that has returned — also with `synchronous_commit`
/// off, where the *write* position (`pg_current_wal_lsn`) can still be
/// short of it.
pub async fn primary_lsn(conn: &mut AsyncPgConnection) -> Result<u64> {
    Ok(lsn_of(conn, "SELECT pg_current_wal_insert_lsn()::text AS lsn")
        .await?
        .unwrap_or(ALWAYS_PRIMARY))
}

/// How far a standby has replayed (none on a server that is not one).
pub async fn replay_lsn(conn: &mut AsyncPgConnection) -> Result<Option<u64>> {
    lsn_of(conn, "SELECT pg_last_wal_replay_lsn()::text AS lsn").await
}

impl Replica {
    pub fn new(pool: DbPool) -> Self {
        Self {
            pool,
            fences: DashMap::new(),
            highest: AtomicU64::new(0),
            replica_reads: AtomicU64::new(0),
            primary_reads: AtomicU64::new(0),
        }
    }

    /// Records that `phones` were written in a commit at or before `lsn`.
    pub fn note<'a>(&self, phones: impl IntoIterator<Item = &'a str>, lsn: u64) {
        if self.fences.len() > MAX_FENCES {
            self.fences.clear();
        }
        for p in phones {
            self.fences
                .entry(p.to_string())
                .and_modify(|f| *f = (*f).max(lsn))
                .or_insert(lsn);
        }
        if lsn != ALWAYS_PRIMARY {
            self.highest.fetch_max(lsn, Ordering::Relaxed);
        }
    }

    /// The position a read of `phone` (or of a list, `None`) needs; `None`
    /// when it must be asked of the primary.
    pub fn fence(&self, phone: Option<&str>) -> Option<u64> {
        match phone {
            Some(p) => self.fences.get(p).map(|f| *f),
            None => Some(AtomicU64::load(&self.highest, Ordering::Relaxed)),
        }
    }

    pub fn counted(&self, on_replica: bool) {
        let c = if on_replica {
            &self.replica_reads
        } else {
            &self.primary_reads
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ReadStats {
        ReadStats {
            replica_reads: AtomicU64::load(&self.replica_reads, Ordering::Relaxed),
            primary_reads: AtomicU64::load(&self.primary_reads, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_order_like_the_wal() {
        assert_eq!(parse_lsn("0/16B3748"), Some(0x16B3748));
        assert!(parse_lsn("1/0").unwrap() > parse_lsn("0/FFFFFFFF").unwrap());
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
