//! Read receipts: when the bot takes up an inbound message, the customer
//! sees it read (two blue ticks) and, where the number wants it, the typing
//! indicator until the reply. Best-effort by design — a receipt is sent
//! from a task of its own, bounded by [`DEADLINE`], never retried and never
//! awaited by the step, so a slow or failing call cannot delay a reply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sender::Sender;
use crate::numbers::Numbers;

/// The longest a receipt may take; past it, it is dropped and counted failed.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Sends the receipts and counts them.
pub struct ReadReceipts {
    /// The outbox's sender (each number with its own token); an `Arc<dyn>`
    /// shared with the dispatcher.
    sender: Arc<dyn Sender>,
    numbers: Arc<Numbers>,
    /// The runtime the engine was built on: receipts run there, off the
    /// actors' threads.
    runtime: tokio::runtime::Handle,
    /// Receipts the API took; atomics: counted by the receipts' tasks, read by `/metrics`.
    pub sent: AtomicU64,
    /// Receipts that failed or passed their deadline.
    pub failed: AtomicU64,
}

impl ReadReceipts {
    /// Must be called within a tokio runtime (the receipts' tasks run on it).
    pub fn new(sender: Arc<dyn Sender>, numbers: Arc<Numbers>) -> Self {
        Self {
            sender,
            numbers,
            runtime: tokio::runtime::Handle::current(),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Marks `message_id` of `conversation` read, if its number wants
    /// receipts (a conversation of a number no longer configured follows
    /// the home number; with none configured: always, with typing).
    /// Returns at once; the receipt goes on its own task.
    pub fn taken_up(self: &Arc<Self>, conversation: &str, message_id: &str) {
        let number = self.numbers.of(conversation).or_else(|| self.numbers.home());
        let (read, typing) = number.map_or((true, true), |n| (n.read_receipts, n.typing_indicator));
        if !read {
            return;
        }
        let (from, _) = self.numbers.split(conversation);
        let call = self.sender.mark_read(from, message_id, typing);
        let this = self.clone();
        self.runtime.spawn(async move {
            match tokio::time::timeout(DEADLINE, call).await {
                Ok(Ok(())) => {
                    this.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(why)) => {
                    this.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%why, "read receipt failed");
                }
                Err(_) => {
                    this.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("read receipt passed its deadline");
                }
            }
        });
    }
}
