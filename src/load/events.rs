//! Follows the server's event stream (`/api/events`) to time each message
//! end to end: from its intended send time until the event of its step is
//! read (its reply is committed by then) — `message.received` from the
//! event feed, resumed with `Last-Event-ID` after a lost stream, or a live
//! `transition` from a server without the feed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::client::Target;
use super::measure::Recorder;

/// The pause before following a stream again that was lost or is not up yet.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);

/// Times the messages announced on the stream, until aborted. The server
/// drops a subscriber that falls behind: the follower connects again at
/// once and counts it (messages applied meanwhile go untimed; the checker
/// still counts them).
pub(super) async fn follow_events(target: Target, rec: Arc<Recorder>) {
    // Its own client: the request timeout of the others would cut the stream.
    let client = reqwest::Client::new();
    // With several processes, the first one relays every process's events.
    let base = target.bases.first().cloned().unwrap_or_default();
    let mut connected_once = false;
    let mut last_id: Option<String> = None;
    loop {
        let mut req = client.get(format!("{base}/api/events"));
        if let Some(t) = &target.api_token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(id) = &last_id {
            req = req.header("Last-Event-ID", id.as_str());
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                if connected_once {
                    rec.event_reconnects.fetch_add(1, Ordering::Relaxed);
                }
                connected_once = true;
                read_events(&rec, resp, &mut last_id).await;
            }
            _ => {}
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Reads the stream's frames as they come, until it ends, recording each
/// message they name as seen applied and keeping the last event id.
async fn read_events(rec: &Recorder, mut resp: reqwest::Response, last_id: &mut Option<String>) {
    let mut buf = String::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id: ")) {
                *last_id = Some(id.trim().to_string());
            }
            if let Some(id) = message_id(&frame) {
                rec.seen_applied(&id);
            }
        }
    }
}

/// The provider message id of the inbound message a frame's event tells
/// of: a feed's `message.received`, or a live transition.
fn message_id(frame: &str) -> Option<String> {
    let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
    let event: Value = serde_json::from_str(data).ok()?;
    let id = match event.get("type").and_then(Value::as_str) {
        Some("message.received") => event.pointer("/data/message/id"),
        Some(_) => None,
        None => event.get("provider_message_id"),
    };
    id.and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_feed_event_names_its_inbound_message_and_other_kinds_name_none() {
        let received = "id: 00\nevent: message.received\ndata: {\"type\":\"message.received\",\"data\":{\"message\":{\"id\":\"wamid.r\"}}}\n\n";
        assert_eq!(message_id(received).as_deref(), Some("wamid.r"));
        let sent = "id: 01\nevent: message.sent\ndata: {\"type\":\"message.sent\",\"data\":{\"message\":{\"id\":\"wamid.s\"}}}\n\n";
        assert_eq!(message_id(sent), None);
    }

    /// A server whose event stream ends after one event (as the real one
    /// drops a subscriber that falls behind): the follower connects again
    /// and times the messages announced on the new stream.
    #[tokio::test]
    async fn the_event_follower_connects_again_when_the_stream_is_lost() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (third_tx, third_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            for id in ["wamid.a", "wamid.b"] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut req = [0u8; 4096];
                let _ = sock.read(&mut req).await.unwrap();
                let body = format!("event: transition\ndata: {{\"provider_message_id\":\"{id}\"}}\n\n");
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
                sock.write_all(format!("{head}{body}").as_bytes()).await.unwrap();
                // Closing ends the stream.
            }
            // A third connection comes after the second stream was read
            // to its end; it is left unanswered.
            let (sock, _) = listener.accept().await.unwrap();
            let _ = third_tx.send(sock);
        });
        let target = Target {
            bases: vec![base],
            app_secret: None,
            api_token: None,
            by_phone: false,
        };
        let rec = Arc::new(Recorder::new(Instant::now()));
        for id in ["wamid.a", "wamid.b"] {
            rec.waiting.insert(id.to_string(), Some(Instant::now()));
        }
        let follower = tokio::spawn(follow_events(target, rec.clone()));
        let _held = tokio::time::timeout(Duration::from_secs(30), third_rx)
            .await
            .expect("the follower came back a second time")
            .unwrap();
        follower.abort();
        assert_eq!(rec.applied.load(Ordering::Relaxed), 2);
        assert!(rec.waiting.iter().all(|w| w.is_none()), "both seen applied");
        assert_eq!(rec.event_reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(rec.e2e.lock().unwrap().len(), 2);
    }
}
