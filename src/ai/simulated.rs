//! The `simulated` provider: the rules provider's answers with configurable
//! latency, errors and hangs, for the load harness and fault tests.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use rand::Rng;

pub use crate::config::SimulatedSettings;

use super::{rules, IntentRequest, Model, ModelError, SlotRequest};

/// Rules answers, delivered late, wrongly or never. Settings can be changed
/// while running (fault tests turn hangs on and off).
#[derive(Debug, Clone)]
pub struct SimulatedModel {
    /// Shared by the clones (a test keeps one to call `set`); a read-write
    /// lock, as every call reads it and only `set` writes.
    settings: Arc<std::sync::RwLock<SimulatedSettings>>,
}

impl SimulatedModel {
    pub fn new(settings: SimulatedSettings) -> Self {
        Self {
            settings: Arc::new(std::sync::RwLock::new(settings)),
        }
    }

    /// Replaces the behaviour of calls that start from now on.
    pub fn set(&self, settings: SimulatedSettings) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
    }

    fn behaviour(&self) -> (Duration, bool, bool) {
        let s = self.settings.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rng = rand::rng();
        let latency = Duration::from_millis(s.latency_ms + rng.random_range(0..=s.jitter_ms));
        let hang = rng.random_bool(s.hang_rate.clamp(0.0, 1.0));
        let fail = rng.random_bool(s.error_rate.clamp(0.0, 1.0));
        (latency, hang, fail)
    }

    fn call<T: Send + 'static>(&self, answer: T) -> BoxFuture<'static, Result<T, ModelError>> {
        let (latency, hang, fail) = self.behaviour();
        async move {
            if hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(latency).await;
            if fail {
                return Err(ModelError::Provider("simulated failure".into()));
            }
            Ok(answer)
        }
        .boxed()
    }
}

impl Model for SimulatedModel {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn detect_intent(&self, req: Arc<IntentRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        self.call(rules::detect(&req))
    }

    fn extract_slot(&self, req: Arc<SlotRequest>) -> BoxFuture<'static, Result<Option<String>, ModelError>> {
        self.call(rules::extract(&req))
    }
}
