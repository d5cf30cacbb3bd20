//! One inbound message is one trace, exported over OTLP/HTTP to a receiver
//! of the test's own: the webhook, the inbox commit, the actor's step, the
//! model call, the step's commit and the send, each under the one before,
//! and the send API gets the send's `traceparent`. No attribute holds the
//! contact's phone or what they wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::Value;
use support::TestDb;
use switchboard::load::fake_graph::FakeGraph;

/// An OTLP/HTTP receiver of JSON traces: keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    /// Listens on a free loopback port; returns its base URL.
    fn start(&self) -> String {
        let spans = self.spans.clone();
        let server = HttpServer::new(move || {
            let spans = spans.clone();
            App::new().route(
                "/v1/traces",
                web::post().to(move |body: web::Bytes| {
                    let spans = spans.clone();
                    async move {
                        let Ok(batch) = serde_json::from_slice::<Value>(&body) else {
                            return HttpResponse::BadRequest().finish();
                        };
                        let mut kept = spans.lock().unwrap();
                        for resource in batch["resourceSpans"].as_array().into_iter().flatten() {
                            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                                kept.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                            }
                        }
                        HttpResponse::Ok().json(serde_json::json!({}))
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
}

/// `serve` exporting its traces to `receiver` (`extra`: more of
/// `[telemetry]`), answered by `fake`; the message `id` of `phone` posted
/// (with `traceparent`, if given) and replied to, then the process stopped
/// gracefully, which exports the spans still waiting.
async fn traced_message(
    receiver: &Receiver,
    fake: &FakeGraph,
    extra: &str,
    (phone, id): (&str, &str),
    traceparent: Option<&str>,
) {
    let db = TestDb::migrated().await;
    let otlp = receiver.start();
    let dir = tempfile::tempdir().unwrap();
    let w = fake.settings();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\n[log]\nformat = \"json\"\n\
             [outbox]\npoll_interval_ms = 20\n\
             [whatsapp]\napi_base = \"{}\"\naccess_token = \"t\"\nphone_number_id = \"{}\"\nread_receipts = false\n\
             [telemetry]\notlp_endpoint = \"{otlp}\"\nexport_every_ms = 100\n{extra}",
            db.url.expose(),
            w.api_base,
            w.phone_number_id.unwrap(),
        ),
    )
    .unwrap();
    let (mut child, port) = support::serve(dir.path());
    let sent_before = fake.arrivals().len();
    let body = serde_json::to_vec(&support::app::delivery(vec![support::app::change(
        vec![support::app::text_message(phone, id, "hola")],
        vec![],
    )]))
    .unwrap();
    let mut post = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header("content-type", "application/json");
    if let Some(t) = traceparent {
        post = post.header("traceparent", t);
    }
    assert_eq!(post.body(body).send().await.unwrap().status().as_u16(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while fake.arrivals().len() == sent_before {
        assert!(std::time::Instant::now() < deadline, "no reply was sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

#[actix_web::test]
async fn one_message_is_one_trace_from_the_webhook_to_the_send() {
    let fake = FakeGraph::start().unwrap();
    let receiver = Receiver::default();
    traced_message(&receiver, &fake, "", ("5215577770001", "wamid.trace1"), None).await;

    let spans = receiver.spans();
    let named = |name: &str| -> Vec<&Value> { spans.iter().filter(|s| s["name"] == name).collect() };
    let one = |name: &str| -> &Value {
        let found = named(name);
        assert_eq!(found.len(), 1, "one `{name}` span: {spans:#?}");
        found[0]
    };
    let (webhook, inbound, inbox, step, model, commit, send) = (
        one("webhook"),
        one("inbound"),
        one("inbox.commit"),
        one("step"),
        one("model"),
        one("commit"),
        named("send"),
    );
    let trace = webhook["traceId"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    let under = |child: &Value, parent: &Value| {
        assert_eq!(child["traceId"], trace, "{} is in the message's trace", child["name"]);
        assert_eq!(
            child["parentSpanId"], parent["spanId"],
            "{} is under {}",
            child["name"], parent["name"]
        );
    };
    assert!(
        webhook["parentSpanId"].as_str().unwrap_or_default().is_empty(),
        "the webhook starts the trace"
    );
    under(inbound, webhook);
    under(inbox, inbound);
    under(step, inbound);
    under(model, step);
    under(commit, step);
    assert!(!send.is_empty(), "no send span: {spans:#?}");
    for s in &send {
        under(s, step);
    }
    // The send API was told which span sent it.
    let told: Vec<String> = fake.arrivals().iter().filter_map(|a| a.traceparent.clone()).collect();
    assert!(!told.is_empty(), "the send carried no traceparent");
    let sends: HashMap<&str, &Value> = send.iter().map(|s| (s["spanId"].as_str().unwrap(), *s)).collect();
    for header in told {
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts[1], trace, "{header}");
        assert!(sends.contains_key(parts[2]), "{header} names a send span");
    }
    // No personal data: neither the phone nor the text in any attribute.
    let attributes = serde_json::to_string(&spans.iter().map(|s| &s["attributes"]).collect::<Vec<_>>()).unwrap();
    assert!(!attributes.contains("5577770001"), "{attributes}");
    assert!(!attributes.contains("hola"), "{attributes}");
}

/// A `traceparent` on the webhook chooses the trace (and whether it is
/// kept) only when `telemetry.trust_traceparent` says so: Meta sends none,
/// and anyone can send one.
#[actix_web::test]
async fn a_webhooks_traceparent_is_followed_only_when_trusted() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER: &str = "00f067aa0ba902b7";
    let header = format!("00-{TRACE}-{CALLER}-01");
    let fake = FakeGraph::start().unwrap();
    let webhook_span = |receiver: &Receiver| {
        let spans = receiver.spans();
        let found: Vec<Value> = spans.into_iter().filter(|s| s["name"] == "webhook").collect();
        assert_eq!(found.len(), 1, "{found:#?}");
        found.into_iter().next().unwrap()
    };

    let untrusted = Receiver::default();
    traced_message(&untrusted, &fake, "", ("5215577770002", "wamid.trace2"), Some(&header)).await;
    let webhook = webhook_span(&untrusted);
    assert_ne!(webhook["traceId"], TRACE, "an outsider chose the trace");
    assert!(webhook["parentSpanId"].as_str().unwrap_or_default().is_empty());

    let trusted = Receiver::default();
    let extra = "trust_traceparent = true\n";
    traced_message(&trusted, &fake, extra, ("5215577770003", "wamid.trace3"), Some(&header)).await;
    let webhook = webhook_span(&trusted);
    assert_eq!(webhook["traceId"], TRACE);
    assert_eq!(webhook["parentSpanId"], CALLER);
}
