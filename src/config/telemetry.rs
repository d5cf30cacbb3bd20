//! `[telemetry]`: OpenTelemetry traces over OTLP/HTTP. Off unless
//! `otlp_endpoint` is set; logs are `[log]`'s.

use serde::{Deserialize, Serialize};

/// `[telemetry]` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP base URL of a collector beside the process
    /// (`http://localhost:4318`); spans go to `<it>/v1/traces` as JSON.
    /// None: no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Share of new traces kept, 0 to 1 (a kept trace keeps all its spans).
    pub sample_ratio: f64,
    /// Milliseconds between exports of finished spans (and at stop).
    pub export_every_ms: u64,
    /// Whether a webhook's `traceparent` header is followed (its trace id
    /// and its sampling choice). Meta sends none: one comes from a gateway
    /// of the team's own, or from anyone on the internet choosing trace ids
    /// and forcing every trace kept. Off: each delivery starts its trace.
    pub trust_traceparent: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "switchboard".into(),
            sample_ratio: 1.0,
            export_every_ms: 5_000,
            trust_traceparent: false,
        }
    }
}

impl TelemetrySettings {
    /// Where spans are posted, if anywhere.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

/// What is wrong with `s`, by key.
pub(super) fn problems(s: &TelemetrySettings) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(url) = &s.otlp_endpoint {
        // A collector beside the process (an agent, a sidecar): plain HTTP.
        if !url.starts_with("http://") {
            out.push(format!("telemetry.otlp_endpoint: an http:// URL, not `{url}`"));
        }
    }
    if !(0.0..=1.0).contains(&s.sample_ratio) {
        out.push("telemetry.sample_ratio: from 0 to 1".into());
    }
    if s.export_every_ms == 0 {
        out.push("telemetry.export_every_ms: at least 1".into());
    }
    if s.service_name.trim().is_empty() {
        out.push("telemetry.service_name: not empty".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_go_to_the_collectors_traces_path() {
        let mut s = TelemetrySettings::default();
        assert_eq!(s.traces_url(), None, "off by default");
        s.otlp_endpoint = Some("http://127.0.0.1:4318/".into());
        assert_eq!(s.traces_url().as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        s.otlp_endpoint = Some("http://collector:4318/v1/traces".into());
        assert_eq!(s.traces_url().as_deref(), Some("http://collector:4318/v1/traces"));
        assert!(problems(&s).is_empty());
    }

    #[test]
    fn bad_values_are_named_by_key() {
        let s = TelemetrySettings {
            otlp_endpoint: Some("collector:4317".into()),
            sample_ratio: 1.5,
            export_every_ms: 0,
            service_name: " ".into(),
            trust_traceparent: false,
        };
        let found = problems(&s).join("\n");
        for key in ["otlp_endpoint", "sample_ratio", "export_every_ms", "service_name"] {
            assert!(found.contains(&format!("telemetry.{key}")), "{found}");
        }
    }
}
