//! One trace per inbound message, across the actors and the outbox: the
//! spans exported over OTLP carry the target [`TARGET`] (nothing else is
//! exported), and the link from one part of the path to the next is a W3C
//! `traceparent` string — in the inbox row, the outbox row, the actor
//! message, the outgoing HTTP request. Attributes name kinds, counts and
//! ids of our own, never a phone, a name or a body.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the spans exported as traces.
pub const TARGET: &str = "switchboard::trace";

/// Set once traces are exported: otherwise no `traceparent` is made or sent.
static ON: AtomicBool = AtomicBool::new(false);

pub(super) fn switch_on() {
    ON.store(true, Ordering::Relaxed);
}

/// Whether traces are exported.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The W3C `traceparent` of `span`, when traces are exported and it is in one.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if !on() {
        return None;
    }
    header_of(&span.context())
}

/// The `traceparent` of the innermost trace span entered here (log spans
/// entered inside it — `#[instrument]`ed functions — do not hide it).
pub fn current() -> Option<String> {
    if !on() {
        return None;
    }
    header_of(&opentelemetry::Context::current())
}

fn header_of(cx: &opentelemetry::Context) -> Option<String> {
    let mut carrier = One(None);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.0
}

/// Makes `span` a child of the span `traceparent` names (from a row, a
/// message, a request header); a missing or malformed one leaves it a root.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent.filter(|_| on()) else {
        return;
    };
    let cx = TraceContextPropagator::new().extract(&One(Some(value.to_string())));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// `request` with the current span's `traceparent` header, if any.
pub fn inject(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current() {
        Some(value) => request.header("traceparent", value),
        None => request,
    }
}

/// A carrier of the one header we propagate.
struct One(Option<String>);

impl Injector for One {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for One {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}
