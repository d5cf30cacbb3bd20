//! A circuit breaker per business number: one number's token revoked or
//! its sends failing stops that number's sends, not the others'.

use std::collections::HashMap;

use crate::breaker::CircuitBreaker;
use crate::config::BreakerSettings;
use crate::numbers::Numbers;

/// The outbound breakers. Clones share their state.
#[derive(Clone)]
pub struct OutboundBreakers {
    /// `outbound`: the home number's, and that of conversations of no
    /// configured number.
    default: CircuitBreaker,
    /// `outbound:<phone_number_id>`: each other number's.
    own: HashMap<String, CircuitBreaker>,
    home: Option<String>,
}

impl OutboundBreakers {
    pub fn new(settings: &BreakerSettings, numbers: &Numbers) -> Self {
        let home = numbers.home().map(|h| h.id.clone());
        let own = numbers
            .all()
            .iter()
            .filter(|n| Some(&n.id) != home.as_ref())
            .map(|n| {
                // Breaker names are static: one per configured number, made once at start.
                let name: &'static str = Box::leak(format!("outbound:{}", n.id).into_boxed_str());
                (n.id.clone(), CircuitBreaker::new(name, settings.clone()))
            })
            .collect();
        Self {
            default: CircuitBreaker::new("outbound", settings.clone()),
            own,
            home,
        }
    }

    /// The breaker of `number` (as `Numbers::split` names it; `None` when
    /// no number is configured).
    pub fn of(&self, number: Option<&str>) -> &CircuitBreaker {
        number
            .filter(|n| Some(*n) != self.home.as_deref())
            .and_then(|n| self.own.get(n))
            .unwrap_or(&self.default)
    }

    /// The home number's (`outbound`).
    pub fn home(&self) -> &CircuitBreaker {
        &self.default
    }

    /// Every one, `outbound` first.
    pub fn all(&self) -> Vec<CircuitBreaker> {
        let mut own: Vec<&CircuitBreaker> = self.own.values().collect();
        own.sort_by_key(|b| b.name());
        std::iter::once(&self.default).chain(own).cloned().collect()
    }
}
