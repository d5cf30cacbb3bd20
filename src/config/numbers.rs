//! One business number of the deployment (`[[whatsapp.numbers]]`): its own
//! token, flow, send rate and templates, each defaulting to the deployment's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NumberSettings {
    /// The number's id in the Cloud API (`metadata.phone_number_id`).
    pub phone_number_id: String,
    /// Default: `whatsapp.access_token`.
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// Default: `flow.path`.
    #[serde(default)]
    pub flow: Option<PathBuf>,
    /// Sends per second from this number. Default: `outbox.rate_per_s`.
    #[serde(default)]
    pub rate_per_s: Option<u32>,
    /// Shown in the console and the API (e.g. "Ventas", "Soporte").
    #[serde(default)]
    pub name: Option<String>,
    /// Default: `whatsapp.read_receipts`.
    #[serde(default)]
    pub read_receipts: Option<bool>,
    /// Default: `whatsapp.typing_indicator`.
    #[serde(default)]
    pub typing_indicator: Option<bool>,
    /// This number's templates, where they differ. Default: `whatsapp.templates`.
    #[serde(default)]
    pub templates: Option<Vec<super::TemplateSettings>>,
}
