//! `[retention]`: how long personal data is kept. A background job blanks
//! or deletes what expired, in small batches (0 keeps it forever). The
//! event feed's own retention is `integrations.events_keep_s`.

use serde::{Deserialize, Serialize};

/// `[retention]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Days a message's body (in the transcript and in its outbox row) is
    /// kept; then it is blanked (the row stays: counts and order hold).
    pub message_days: u32,
    /// Days the raw payload of an inbound message (and the contact's name
    /// it carried) is kept once applied; then it is blanked.
    pub payload_days: u32,
    /// Days a dead letter is kept; then it is deleted.
    pub dead_letter_days: u32,
    /// Minutes between the job's rounds.
    pub every_minutes: u32,
    /// Rows one statement changes at most: short locks, short WAL bursts.
    pub batch: i64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            message_days: 0,
            payload_days: 0,
            dead_letter_days: 0,
            every_minutes: 10,
            batch: 1_000,
        }
    }
}

impl RetentionSettings {
    /// Whether anything expires.
    pub fn any(&self) -> bool {
        self.message_days + self.payload_days + self.dead_letter_days > 0
    }
}

/// What is wrong with `s`, by key.
pub(super) fn problems(s: &RetentionSettings) -> Vec<String> {
    let mut out = Vec::new();
    if s.any() && s.every_minutes == 0 {
        out.push("retention.every_minutes: at least 1".into());
    }
    if s.any() && !(1..=100_000).contains(&s.batch) {
        out.push("retention.batch: from 1 to 100000".into());
    }
    out
}
