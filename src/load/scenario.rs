//! Scenarios: what to send, and when (offsets from the start of the run),
//! in which conversations (`population`), and each message's kind.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::mixed::Mixed;
pub(super) use super::plan::Said;
pub use super::plan::{Action, Bad, Kind, Message, Planned, SCRIPT};
use super::population::Population;

/// The named workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// A constant rate over many phones (the acceptance workload: 50/s for 2 min).
    Steady,
    /// 100 messages for one phone at once.
    Burst,
    /// Every message delivered 1 to 5 times, concurrently and out of order.
    Duplicates,
    /// Zipf-skewed phones: a few very busy conversations.
    Hot,
    /// The simulated model with latency, errors and hangs.
    AiSlow,
    /// Webhooks of every kind (texts, reactions, images, locations, now and
    /// then a bad message among good ones), status updates, agent replies
    /// and conversation reads together.
    Mixed,
    /// As `steady`, on the example flow with a 2-second reminder where it
    /// asks for a SAP number: with a conversation's messages a few seconds
    /// apart, some customers answer before their reminder (cancelling it),
    /// some after (it fires). `--timer-wave N` adds N timers due in the
    /// same second, mid-run.
    Timers,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Burst => "burst",
            Scenario::Duplicates => "duplicates",
            Scenario::Hot => "hot",
            Scenario::AiSlow => "ai-slow",
            Scenario::Mixed => "mixed",
            Scenario::Timers => "timers",
        }
    }

    /// The flow the run's server runs: the example flow, with the
    /// `timers` scenario's short reminder.
    pub fn flow(self) -> String {
        match self {
            Scenario::Timers => super::EXAMPLE_FLOW.replace(REMINDER, SHORT_REMINDER),
            _ => super::EXAMPLE_FLOW.to_string(),
        }
    }
}

/// The example flow's reminder where it asks for a SAP number, and the
/// `timers` scenario's.
const REMINDER: &str = "[states.refri_sap.after.\"10m\"]";
const SHORT_REMINDER: &str = "[states.refri_sap.after.\"2s\"]";

/// Knobs of a plan.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub rate: f64,
    pub duration: Duration,
    pub phones: usize,
    /// Most deliveries of one message (`duplicates`).
    pub max_deliveries: u32,
    /// Zipf exponent (`hot`).
    pub skew: f64,
    pub seed: u64,
    /// The business numbers and the username-only share of the contacts.
    pub population: Population,
}

/// Builds the whole plan, sorted by time.
pub fn plan(o: &Options) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let phones = o.phones.max(1);
    let mut said = Said::new(o.seed, o.population, phones);
    let mut mixed = Mixed::default();
    let mut out = Vec::new();
    if o.scenario == Scenario::Burst {
        for n in 0..100 {
            out.push(said.text(0, n, Duration::ZERO));
        }
        return out;
    }
    let total = (o.rate * o.duration.as_secs_f64()).round() as usize;
    let zipf = zipf_cdf(phones, o.skew);
    for n in 0..total {
        let at = Duration::from_secs_f64(n as f64 / o.rate.max(0.001));
        let p = match o.scenario {
            Scenario::Hot => sample(&zipf, rng.random::<f64>()),
            _ => rng.random_range(0..phones),
        };
        match o.scenario {
            Scenario::Duplicates => {
                let first = said.text(p, n, at);
                let copies = rng.random_range(1..=o.max_deliveries.max(1));
                for c in 0..copies {
                    let mut d = first.clone();
                    // Concurrent and out of order: each copy somewhere in the next 200 ms.
                    d.at = at + Duration::from_millis(rng.random_range(0..200));
                    d.duplicate = c > 0;
                    out.push(d);
                }
            }
            Scenario::Mixed => out.push(mixed.next(&mut said, &mut rng, p, n, at)),
            _ => out.push(said.text(p, n, at)),
        }
    }
    out.sort_by_key(|p| p.at);
    out
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn sample(cdf: &[f64], u: f64) -> usize {
    cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::load::mixed::BAD_EVERY;
    use crate::load::payloads;
    use crate::load::population::Peer;

    /// A plan of `scenario` over `phones` contacts, 1,000 steps long.
    fn plan_of(scenario: Scenario, phones: usize, population: Population) -> Vec<Planned> {
        plan(&Options {
            scenario,
            rate: 100.0,
            duration: Duration::from_secs(10),
            phones,
            max_deliveries: 5,
            skew: 1.1,
            seed: 7,
            population,
        })
    }

    fn peers(plan: &[Planned]) -> impl Iterator<Item = &Peer> {
        plan.iter().map(|p| match &p.action {
            Action::Webhook { to, .. } | Action::Status { to, .. } | Action::Agent { to, .. } | Action::Read { to } => {
                to
            }
        })
    }

    #[test]
    fn with_two_numbers_the_plan_writes_to_both() {
        for scenario in [Scenario::Steady, Scenario::Hot, Scenario::Mixed] {
            let plan = plan_of(
                scenario,
                10,
                Population {
                    numbers: 2,
                    username_share: 0.0,
                },
            );
            for k in 0..2 {
                let number = crate::load::population::number_id(k);
                assert!(
                    peers(&plan).any(|p| p.number == number),
                    "{scenario:?} never uses {number}"
                );
            }
            // Each contact writes to one number only; the first is the home one.
            let mut number_of = std::collections::HashMap::new();
            for p in peers(&plan) {
                let number = *number_of.entry(p.contact.id()).or_insert(&p.number);
                assert_eq!(number, &p.number, "{p:?}");
                assert_eq!(p.home, p.number == crate::load::population::number_id(0));
            }
        }
        let one = plan_of(Scenario::Steady, 10, Population::default());
        assert!(peers(&one).all(|p| p.home));
    }

    #[test]
    fn with_every_contact_username_only_no_delivery_names_a_phone() {
        for scenario in [Scenario::Steady, Scenario::Duplicates, Scenario::Mixed] {
            let plan = plan_of(
                scenario,
                10,
                Population {
                    numbers: 2,
                    username_share: 1.0,
                },
            );
            for p in &plan {
                let body = match &p.action {
                    Action::Webhook { to, messages } => payloads::delivery_body(
                        to,
                        messages.iter().map(|m| payloads::message(to, m)).collect(),
                        Vec::new(),
                    ),
                    Action::Status { to, id, status } => {
                        payloads::delivery_body(to, Vec::new(), vec![payloads::status(to, id, status)])
                    }
                    _ => continue,
                };
                let text = String::from_utf8(body).unwrap_or_default();
                for field in ["\"from\"", "\"wa_id\"", "\"recipient_id\""] {
                    assert!(!text.contains(field), "{field} in {text}");
                }
                assert!(text.contains("_user_id\""), "{text}");
            }
        }
    }

    #[test]
    fn a_plan_is_the_same_for_the_same_seed() {
        let population = Population {
            numbers: 3,
            username_share: 0.2,
        };
        assert_eq!(
            plan_of(Scenario::Mixed, 10, population),
            plan_of(Scenario::Mixed, 10, population)
        );
    }

    #[test]
    fn mixed_sends_reactions_images_locations_and_a_bad_message_in_every_twentieth_delivery() {
        let plan = plan_of(
            Scenario::Mixed,
            10,
            Population {
                numbers: 2,
                username_share: 0.5,
            },
        );
        let mut seen = HashSet::new();
        let (mut deliveries, mut with_bad, mut reactions, mut images, mut locations) = (0, 0, 0, 0, 0);
        let mut bad_kinds = HashSet::new();
        // In plan order (it is sorted by time, and mixed has one step per instant).
        for step in &plan {
            let Action::Webhook { to, messages } = &step.action else {
                continue;
            };
            deliveries += 1;
            let bad: Vec<&Message> = messages.iter().filter(|m| m.is_bad()).collect();
            if !bad.is_empty() {
                with_bad += 1;
                assert_eq!(
                    (bad.len(), messages.len()),
                    (1, 3),
                    "one bad among good ones: {messages:?}"
                );
            }
            for m in messages {
                match &m.kind {
                    Kind::Reaction { message_id, .. } => {
                        reactions += 1;
                        assert!(
                            seen.contains(&(to.key(), message_id.clone())),
                            "a reaction to an earlier message of its contact"
                        );
                    }
                    Kind::Image { caption, .. } => {
                        images += 1;
                        assert!(!caption.is_empty());
                    }
                    Kind::Location { .. } => locations += 1,
                    Kind::Bad(b) => {
                        bad_kinds.insert(*b);
                    }
                    Kind::Text(_) => {}
                }
                seen.insert((to.key(), m.id.clone()));
            }
        }
        assert!(deliveries > 500, "{deliveries}");
        assert_eq!(with_bad, deliveries / BAD_EVERY);
        assert!(
            reactions > 0 && images > 0 && locations > 0,
            "{reactions} {images} {locations}"
        );
        assert_eq!(bad_kinds.len(), 2, "both kinds of bad message");
        assert_eq!(
            seen.len(),
            plan.iter()
                .map(|s| match &s.action {
                    Action::Webhook { messages, .. } => messages.len(),
                    _ => 0,
                })
                .sum::<usize>(),
            "every message id is unique"
        );
    }

    #[test]
    fn only_mixed_sends_anything_but_texts() {
        for scenario in [
            Scenario::Steady,
            Scenario::Duplicates,
            Scenario::Hot,
            Scenario::Burst,
            Scenario::Timers,
        ] {
            let plan = plan_of(scenario, 10, Population::default());
            for step in &plan {
                let Action::Webhook { messages, .. } = &step.action else {
                    panic!("{scenario:?} plans only deliveries");
                };
                assert!(matches!(
                    messages.as_slice(),
                    [Message {
                        kind: Kind::Text(_),
                        ..
                    }]
                ));
            }
        }
    }

    #[test]
    fn the_timers_scenario_runs_the_example_flow_with_a_two_second_reminder() {
        let flow = crate::flow::Flow::parse(&Scenario::Timers.flow(), "timers.toml").unwrap();
        let rules = &flow.state("refri_sap").unwrap().after;
        assert_eq!(rules[0].delay, Duration::from_secs(2));
        assert_eq!(Scenario::Steady.flow(), crate::load::EXAMPLE_FLOW);
    }
}
