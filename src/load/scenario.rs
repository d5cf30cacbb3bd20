//! Scenarios: what to send, and when (offsets from the start of the run).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

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
    /// Webhooks, status updates, agent replies and conversation reads together.
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
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A WhatsApp delivery with one text message.
    Webhook { phone: String, id: String, text: String },
    /// A delivery status for one of our outbound messages.
    Status {
        phone: String,
        id: String,
        status: &'static str,
    },
    /// An agent reply through the API.
    Agent { phone: String, text: String },
    /// A conversation read through the API.
    Read { phone: String },
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

/// The phone of index `i` (13 digits, Mexican mobile format).
pub fn phone(i: usize) -> String {
    format!("5215{:09}", 100_000_000 + i)
}

/// Builds the whole plan, sorted by time.
pub fn plan(o: &Options) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let phones = o.phones.max(1);
    let mut turn = vec![0usize; phones];
    let mut out = Vec::new();
    let webhook = |p: usize, n: usize, at: Duration, turn: &mut Vec<usize>| {
        let text = SCRIPT[turn[p] % SCRIPT.len()].to_string();
        turn[p] += 1;
        Planned {
            at,
            action: Action::Webhook {
                phone: phone(p),
                id: format!("wamid.load.{}.{n}", o.seed),
                text,
            },
            duplicate: false,
        }
    };
    if o.scenario == Scenario::Burst {
        for n in 0..100 {
            out.push(webhook(0, n, Duration::ZERO, &mut turn));
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
                let first = webhook(p, n, at, &mut turn);
                let copies = rng.random_range(1..=o.max_deliveries.max(1));
                for c in 0..copies {
                    let mut d = first.clone();
                    // Concurrent and out of order: each copy somewhere in the next 200 ms.
                    d.at = at + Duration::from_millis(rng.random_range(0..200));
                    d.duplicate = c > 0;
                    out.push(d);
                }
            }
            Scenario::Mixed => {
                let roll = rng.random_range(0..10);
                let action = match roll {
                    0 => Action::Status {
                        phone: phone(p),
                        id: format!("wamid.fake.{}", rng.random_range(1..=n.max(1))),
                        status: ["delivered", "read"][rng.random_range(0..2)],
                    },
                    1 => Action::Agent {
                        phone: phone(p),
                        text: "Hola, soy del equipo de soporte.".into(),
                    },
                    2 => Action::Read { phone: phone(p) },
                    _ => {
                        out.push(webhook(p, n, at, &mut turn));
                        continue;
                    }
                };
                out.push(Planned {
                    at,
                    action,
                    duplicate: false,
                });
            }
            _ => out.push(webhook(p, n, at, &mut turn)),
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
