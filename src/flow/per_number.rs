//! Which flow a conversation runs: its business number's own (`flow` of
//! its `[[whatsapp.numbers]]` entry), else the deployment's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::{Flow, FlowError};
use crate::numbers::Numbers;

#[derive(Debug)]
pub struct Flows {
    default: Arc<Flow>,
    /// Number id → its own flow (only numbers whose flow is not the default).
    own: HashMap<String, Arc<Flow>>,
    numbers: Arc<Numbers>,
}

impl Flows {
    /// Loads each number's own flow (each file once); `default_path` is the
    /// file `default` came from, which numbers without a flow of their own share.
    pub fn load(default: Arc<Flow>, default_path: &Path, numbers: Arc<Numbers>) -> Result<Self, FlowError> {
        let mut files: HashMap<&Path, Arc<Flow>> = HashMap::new();
        let mut own = HashMap::new();
        for n in numbers.all().iter().filter(|n| n.flow != default_path) {
            let flow = match files.get(n.flow.as_path()) {
                Some(f) => f.clone(),
                None => Arc::new(Flow::load(&n.flow)?),
            };
            files.insert(&n.flow, flow.clone());
            own.insert(n.id.clone(), flow);
        }
        Ok(Self { default, own, numbers })
    }

    /// One flow for every conversation (an embedder's, or a one-number deployment).
    pub fn single(default: Arc<Flow>) -> Self {
        Self {
            default,
            own: HashMap::new(),
            numbers: Arc::default(),
        }
    }

    /// The flow of the conversation keyed `key`.
    pub fn of(&self, key: &str) -> &Arc<Flow> {
        match self.numbers.split(key).0 {
            Some(number) => self.own.get(number).unwrap_or(&self.default),
            None => &self.default,
        }
    }

    /// The flow of business number `id`'s conversations (`None`: a
    /// deployment without numbers).
    pub fn of_number(&self, id: Option<&str>) -> &Arc<Flow> {
        id.and_then(|id| self.own.get(id)).unwrap_or(&self.default)
    }

    /// The business numbers the flows are chosen by.
    pub fn numbers(&self) -> &Arc<Numbers> {
        &self.numbers
    }

    /// Every flow in use: the default first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Flow>> {
        std::iter::once(&self.default).chain(self.own.values())
    }

    pub fn default_flow(&self) -> &Arc<Flow> {
        &self.default
    }
}
