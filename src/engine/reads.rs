//! Reads the HTTP layer serves that need no actor: conversation lists and
//! histories (on the replica when it has caught up), dead letters, a ping.

use scoped_futures::ScopedFutureExt;

use super::Engine;
use crate::db::dead_letters::{self, DeadLetter};
use crate::db::media::{self, MediaInfo};
use crate::db::read::{self, ContactDisplay, ConversationSummary, ListFilter, MessageRow};
use crate::error::Result;

impl Engine {
    /// Conversations matching `filter`, newest activity first.
    pub async fn list_conversations(&self, filter: &ListFilter) -> Result<Vec<ConversationSummary>> {
        let db = &self.inner.db;
        let listed = db
            .retry_policy()
            .run("list_conversations", || async {
                read::list(&mut db.read_conn(None).await?.0, filter).await
            })
            .await?;
        Ok(listed)
    }

    /// The newest `limit` messages of `phone`'s conversation and how its
    /// contact shows; from the replica only once it has this conversation's last write.
    pub async fn recent_messages(&self, phone: &str, limit: i64) -> Result<(Vec<MessageRow>, ContactDisplay)> {
        self.messages_before(phone, None, limit).await
    }

    /// A page of `phone`'s history: the newest `limit` messages older than
    /// message `before` (the newest of all: `None`), oldest first.
    pub async fn messages_before(
        &self,
        phone: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<MessageRow>, ContactDisplay)> {
        let db = &self.inner.db;
        db.retry_policy()
            .run("recent_messages", || async {
                let (mut conn, _) = db.read_conn(Some(phone)).await?;
                let messages = read::recent_messages(&mut conn, phone, before, limit).await?;
                Ok((messages, read::contact_display(&mut conn, phone).await?))
            })
            .await
    }

    /// A media file of `phone`'s conversation, and where it is kept once downloaded.
    pub async fn media_file(&self, phone: &str, media_id: &str) -> Result<Option<MediaInfo>> {
        let found = self
            .inner
            .db
            .run("media_file", |c| media::get(c, phone, media_id).scope_boxed())
            .await?;
        Ok(found)
    }

    /// Inbound and outbound dead letters (only those not replayed: `pending_only`).
    pub async fn dead_letters(&self, pending_only: bool, limit: i64) -> Result<Vec<DeadLetter>> {
        let listed = self
            .inner
            .db
            .run("list_dead_letters", |c| {
                dead_letters::list(c, pending_only, limit).scope_boxed()
            })
            .await?;
        Ok(listed)
    }

    /// Dead letters waiting for an operator; `None` when the database does
    /// not answer (an operations panel must not fail with it).
    pub async fn pending_dead_letters(&self) -> Option<i64> {
        self.inner
            .db
            .once(|c| dead_letters::pending_count(c).scope_boxed())
            .await
            .ok()
    }

    /// Whether the database answers now (readiness).
    pub async fn ping_database(&self) -> Result<()> {
        Ok(self.inner.db.ping().await?)
    }
}
