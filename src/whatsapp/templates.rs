//! Message templates: which a conversation may send (its business number's
//! `templates`, else `whatsapp.templates`), a call checked against them
//! (name, language, parameter count), and the statuses WhatsApp reports
//! that stop one (`message_template_status_update`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{TemplateSettings, WhatsAppSettings};
use crate::flow::{FlowError, Flows};
use crate::numbers::Numbers;

/// A template message to send, in the outbox's payload (`{"template": …}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMessage {
    pub name: String,
    pub language: String,
    #[serde(default)]
    pub parameters: Vec<String>,
}

impl TemplateMessage {
    /// The outbox payload.
    pub fn payload(&self) -> Value {
        json!({ "template": self })
    }

    /// The template of an outbox payload, if it holds one.
    pub fn of_payload(payload: &Value) -> Option<Self> {
        serde_json::from_value(payload.get("template")?.clone()).ok()
    }

    /// How the transcript shows it.
    pub fn transcript(&self) -> String {
        if self.parameters.is_empty() {
            format!("[plantilla {} ({})]", self.name, self.language)
        } else {
            format!(
                "[plantilla {} ({}): {}]",
                self.name,
                self.language,
                self.parameters.join(" | ")
            )
        }
    }

    /// The send API's `template` object (Meta: "Send message templates").
    pub fn graph_json(&self) -> Value {
        let mut t = json!({"name": self.name, "language": {"code": self.language}});
        if !self.parameters.is_empty() {
            let params: Vec<Value> = self
                .parameters
                .iter()
                .map(|p| json!({"type": "text", "text": p}))
                .collect();
            t["components"] = json!([{"type": "body", "parameters": params}]);
        }
        t
    }
}

/// Statuses after which WhatsApp refuses a template (Meta: "Template
/// status"): it is refused here with the reason instead.
pub const STOPPED: &[&str] = &[
    "PAUSED",
    "DISABLED",
    "REJECTED",
    "PENDING_DELETION",
    "DELETED",
    "ARCHIVED",
];

/// Whether a template with `status` may not be sent.
pub fn is_stopped(status: &str) -> bool {
    STOPPED.iter().any(|s| s.eq_ignore_ascii_case(status))
}

/// The templates of every conversation.
#[derive(Debug, Default)]
pub struct Templates {
    /// For a deployment without configured numbers.
    default: Vec<TemplateSettings>,
    numbers: Arc<Numbers>,
}

impl Templates {
    pub fn new(w: &WhatsAppSettings, numbers: Arc<Numbers>) -> Self {
        Self {
            default: w.templates.clone(),
            numbers,
        }
    }

    /// The templates conversation `key` may send.
    pub fn of(&self, key: &str) -> &[TemplateSettings] {
        self.numbers.of(key).map_or(&self.default[..], |n| &n.templates[..])
    }

    /// A call of template `name` (in `language`, or its only configured
    /// language) with `parameters`, checked; the error says what is wrong.
    pub fn call(
        &self,
        key: &str,
        name: &str,
        language: Option<&str>,
        parameters: Vec<String>,
    ) -> Result<TemplateMessage, String> {
        let list = self.of(key);
        let t = resolve(list, name, language)?;
        if parameters.len() != t.parameters {
            return Err(format!(
                "template `{name}` ({}) takes {} parameter(s), {} given",
                t.language,
                t.parameters,
                parameters.len()
            ));
        }
        Ok(TemplateMessage {
            name: t.name.clone(),
            language: t.language.clone(),
            parameters,
        })
    }

    /// Checks that every template a flow names is configured for the
    /// numbers that run it, with the parameter count the flow gives.
    pub fn check_flows(&self, flows: &Flows) -> Result<(), FlowError> {
        let numbers: Vec<Option<&str>> = if self.numbers.all().is_empty() {
            vec![None]
        } else {
            self.numbers.all().iter().map(|n| Some(n.id.as_str())).collect()
        };
        for number in numbers {
            let flow = flows.of_number(number);
            let list = number
                .and_then(|id| self.numbers.get(id))
                .map_or(&self.default[..], |n| &n.templates[..]);
            let problems: Vec<String> = flow
                .templates_named()
                .into_iter()
                .filter_map(|(at, call)| {
                    let t = match resolve(list, &call.name, call.language.as_deref()) {
                        Ok(t) => t,
                        Err(e) => return Some(format!("{at}: {e}")),
                    };
                    (t.parameters != call.parameters.len()).then(|| {
                        format!(
                            "{at}: template `{}` takes {} parameter(s), the flow gives {}",
                            t.name,
                            t.parameters,
                            call.parameters.len()
                        )
                    })
                })
                .collect();
            if !problems.is_empty() {
                return Err(FlowError {
                    file: flow.name.clone(),
                    problems,
                });
            }
        }
        Ok(())
    }
}

/// Template `name` in `language` (or its only language) from `list`.
fn resolve<'a>(
    list: &'a [TemplateSettings],
    name: &str,
    language: Option<&str>,
) -> Result<&'a TemplateSettings, String> {
    let named: Vec<&TemplateSettings> = list.iter().filter(|t| t.name == name).collect();
    match (named.as_slice(), language) {
        ([], _) => Err(format!(
            "unknown template `{name}` (configured: {})",
            if list.is_empty() {
                "none; see whatsapp.templates".to_string()
            } else {
                list.iter()
                    .map(|t| format!("{} ({})", t.name, t.language))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        (_, Some(lang)) => named
            .iter()
            .find(|t| t.language == lang)
            .copied()
            .ok_or_else(|| format!("template `{name}` is not configured in language `{lang}`")),
        ([one], None) => Ok(one),
        (several, None) => Err(format!(
            "template `{name}` is configured in {}: give its language",
            several
                .iter()
                .map(|t| t.language.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_call_is_checked_and_goes_in_metas_format() {
        let w = WhatsAppSettings {
            templates: vec![TemplateSettings {
                name: "recordatorio".into(),
                language: "es".into(),
                parameters: 1,
            }],
            ..Default::default()
        };
        let t = Templates::new(&w, Arc::default());
        assert!(t
            .call("521", "otro", None, vec![])
            .unwrap_err()
            .contains("unknown template `otro`"));
        assert!(t
            .call("521", "recordatorio", None, vec![])
            .unwrap_err()
            .contains("takes 1 parameter"));
        let m = t.call("521", "recordatorio", None, vec!["Ana".into()]).unwrap();
        let j = m.graph_json();
        assert_eq!(j["language"]["code"], "es");
        assert_eq!(j["components"][0]["parameters"][0]["text"], "Ana");
        assert_eq!(TemplateMessage::of_payload(&m.payload()), Some(m));
        assert!(is_stopped("PAUSED") && !is_stopped("APPROVED"));
    }
}
