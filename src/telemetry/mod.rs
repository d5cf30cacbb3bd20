//! What the process tells about itself: logs (text or JSON lines on
//! stderr, filtered by `log.level`, or `RUST_LOG`, which wins) and, when
//! `telemetry.otlp_endpoint` is set, traces over OTLP. Personal data is
//! masked where it is logged (see [`crate::phone::mask`]); bodies and
//! secrets are never logged, and no span attribute holds any.

mod otlp;
pub mod trace;

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use otlp::Exporter;
pub use trace::{continue_from, inject, traceparent, TARGET};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber: logs only. Calling it twice keeps the first.
pub fn init(settings: &LogSettings) {
    install(settings, None);
}

/// Installs the global subscriber with `exporter`'s traces beside the logs
/// (logs only when it is None). Calling it twice keeps the first.
pub fn install(settings: &LogSettings, exporter: Option<&Exporter>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The trace spans are not log lines.
    let filter = match format!("{TARGET}=off").parse() {
        Ok(quiet) => filter.add_directive(quiet),
        Err(_) => filter,
    };
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let logs = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    let traces = exporter.map(|e| {
        tracing_opentelemetry::layer()
            .with_tracer(e.tracer())
            // Our spans only (events carry no span data there), decided once
            // per call site: the other call sites' levels stay off.
            .with_filter(tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO))
    });
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(traces)
        .try_init();
    if installed.is_ok() && exporter.is_some() {
        trace::switch_on();
    }
}
