//! The OTLP/HTTP exporter of traces (JSON, to `telemetry.otlp_endpoint`),
//! batched on a thread of its own; flushed at stop.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TelemetrySettings;

/// Exports the spans it is given until [`Exporter::shutdown`].
#[derive(Clone)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Builds the exporter for `settings` (None when traces are off). Its
    /// HTTP client is a blocking one, used from the processor's thread:
    /// build it outside the async runtime (`spawn_blocking`).
    pub fn build(settings: &TelemetrySettings) -> anyhow::Result<Option<Self>> {
        let Some(url) = settings.traces_url() else {
            return Ok(None);
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(10))
            .build()?;
        let batches = BatchConfigBuilder::default()
            .with_scheduled_delay(Duration::from_millis(settings.export_every_ms))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Some(Self { provider }))
    }

    pub(super) fn tracer(&self) -> opentelemetry_sdk::trace::SdkTracer {
        self.provider.tracer("switchboard")
    }

    /// Exports what is left and stops (blocks: call it off the runtime).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be exported");
        }
    }
}
