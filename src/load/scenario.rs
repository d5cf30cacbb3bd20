//! Scenarios: what to send, and when (offsets from the start of the run),
//! in which conversations (`population`), and each message's kind.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::mixed::Mixed;
use super::population::{Peer, Population};

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
        }
    }
}

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

/// One thing to do, in one conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A WhatsApp delivery of one or more messages from the contact.
    Webhook { to: Peer, messages: Vec<Message> },
    /// A delivery status for one of our outbound messages.
    Status { to: Peer, id: String, status: &'static str },
    /// An agent reply through the API.
    Agent { to: Peer, text: String },
    /// A conversation read through the API.
    Read { to: Peer },
}

/// One message of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The provider's id (`wamid…`), unique in the plan.
    pub id: String,
    pub kind: Kind,
}

impl Message {
    /// Whether the server must dead-letter it rather than apply it.
    pub fn is_bad(&self) -> bool {
        matches!(self.kind, Kind::Bad(_))
    }
}

/// What a message is (its shape: `payloads`).
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Stepped.
    Text(String),
    /// To an earlier message of the contact: stored, not stepped (no
    /// reply, no new version).
    Reaction { message_id: String, emoji: &'static str },
    /// With a caption (its text for the flow): stepped; the server fetches
    /// the file.
    Image { media_id: String, caption: String },
    /// Stepped (no text).
    Location { latitude: f64, longitude: f64 },
    /// One the server cannot apply: dead-lettered, the rest of its delivery
    /// applied.
    Bad(Bad),
}

/// Why a bad message cannot be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bad {
    /// Its sender is not a phone (`from`), or not a BSUID (`from_user_id`).
    Sender,
    /// A text over WhatsApp's 4,096 characters.
    LongText,
}

/// An action and its intended send time.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub at: Duration,
    pub action: Action,
    /// A redelivery of a message planned earlier.
    pub duplicate: bool,
}

/// What each phone says, in a loop: a whole fridge report per four messages.
pub const SCRIPT: &[&str] = &["hola", "refrigerador", "1234567890", "si"];

/// Who says what: the run's conversations, each contact's place in the
/// script, and the ids of the plan's messages.
pub(super) struct Said {
    seed: u64,
    population: Population,
    turn: Vec<usize>,
}

impl Said {
    fn new(o: &Options, phones: usize) -> Self {
        Self {
            seed: o.seed,
            population: o.population,
            turn: vec![0; phones],
        }
    }

    /// Contact `p`'s conversation.
    pub(super) fn peer(&self, p: usize) -> Peer {
        self.population.peer(p)
    }

    /// Contact `p`'s next line of the script.
    pub(super) fn next_line(&mut self, p: usize) -> String {
        let line = SCRIPT[self.turn[p] % SCRIPT.len()];
        self.turn[p] += 1;
        line.to_string()
    }

    /// The id of the `k`-th message of the delivery of plan step `n`.
    pub(super) fn id(&self, n: usize, k: usize) -> String {
        match k {
            0 => format!("wamid.load.{}.{n}", self.seed),
            k => format!("wamid.load.{}.{n}.{k}", self.seed),
        }
    }

    /// A media id for plan step `n` (digits, as the Graph API's), unique in the run.
    pub(super) fn media_id(&self, n: usize) -> String {
        format!("90{}{n:09}", self.seed)
    }

    /// A delivery of contact `p`'s next line, as a text.
    fn text(&mut self, p: usize, n: usize, at: Duration) -> Planned {
        let kind = Kind::Text(self.next_line(p));
        let messages = vec![Message {
            id: self.id(n, 0),
            kind,
        }];
        Planned {
            at,
            action: Action::Webhook {
                to: self.peer(p),
                messages,
            },
            duplicate: false,
        }
    }
}

/// Builds the whole plan, sorted by time.
pub fn plan(o: &Options) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let phones = o.phones.max(1);
    let mut said = Said::new(o, phones);
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
pub(super) mod tests {
    use super::*;
    use crate::load::payloads;

    /// A plan of `scenario` over `phones` contacts, 1,000 steps long.
    pub(in crate::load) fn plan_of(scenario: Scenario, phones: usize, population: Population) -> Vec<Planned> {
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
}
