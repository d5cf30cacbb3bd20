//! The customer-service window: free-form messages (bot replies, timer
//! replies, agent messages) may go only within 24 hours of the customer's
//! last message, by that message's own timestamp; outside it, only
//! templates (WhatsApp refuses free-form sends with error 131047).

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;

/// How long the window stays open after the customer's last message.
pub const WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// A conversation's window at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub open: bool,
    /// When it closes (open) or closed (closed); `None`: the customer never wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<DateTime<Utc>>,
}

impl Window {
    /// The window of a conversation whose customer last wrote at `last`, at `now`.
    pub fn at(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        let closes_at = last.map(|l| l + WINDOW);
        Self {
            open: closes_at.is_some_and(|c| now < c),
            closes_at,
        }
    }

    pub fn now(last: Option<DateTime<Utc>>) -> Self {
        Self::at(last, Utc::now())
    }

    /// Why a free-form message cannot go, for the people who asked.
    pub fn closed_reason(&self) -> String {
        match self.closes_at {
            Some(at) => format!(
                "the 24-hour customer-service window closed at {} (24 hours after the customer's last message); \
                 only a template can be sent until the customer writes again",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => "the customer has not written yet, so the 24-hour customer-service window is closed; \
                     only a template can be sent"
                .into(),
        }
    }
}

/// When an inbound message was sent: its `timestamp` (Unix seconds, a
/// string in WhatsApp's payloads; a number accepted). `None` when absent or
/// not a time.
pub fn sent_at(payload: &Value) -> Option<DateTime<Utc>> {
    let ts = payload.get("timestamp")?;
    let secs = match ts {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        Value::Number(n) => n.as_i64()?,
        _ => return None,
    };
    Utc.timestamp_opt(secs, 0).single()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_closes_24_hours_after_the_customers_message() {
        let wrote = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        assert!(Window::at(Some(wrote), wrote + chrono::TimeDelta::hours(23)).open);
        let later = Window::at(Some(wrote), wrote + chrono::TimeDelta::hours(25));
        assert!(!later.open);
        assert!(later.closed_reason().contains("2026-12-02T10:00:00Z"));
        assert!(!Window::at(None, wrote).open);
        assert_eq!(
            sent_at(&serde_json::json!({"timestamp": "1764583200"})),
            Some(Utc.timestamp_opt(1_764_583_200, 0).unwrap())
        );
        assert_eq!(sent_at(&serde_json::json!({"timestamp": "soon"})), None);
    }
}
