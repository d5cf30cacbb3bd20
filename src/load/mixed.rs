//! The `mixed` scenario's steps: agent replies, reads and statuses beside
//! the deliveries, and deliveries of the kinds a WhatsApp user sends
//! besides text — reactions (stored, not stepped), images with a caption
//! and locations (stepped) — with, one delivery in [`BAD_EVERY`], a bad
//! message among good ones: the server must dead-letter it and apply the
//! others (the checker holds it to that).

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use super::plan::{Action, Bad, Kind, Message, Planned, Said};

/// One delivery in this many holds a bad message (beside two good ones).
pub const BAD_EVERY: usize = 20;

/// An agent's reply.
const AGENT_TEXT: &str = "Hola, soy del equipo de soporte.";

/// An agent answers a contact only this long after its first message was
/// planned: free-form messages go only inside the 24-hour window, which
/// that message opens once applied (a 409 otherwise).
const AGENT_AFTER: Duration = Duration::from_secs(2);

/// Where a location message points (Mexico City's Zócalo).
const LATITUDE: f64 = 19.4326;
const LONGITUDE: f64 = -99.1332;

/// What the scenario remembers across the plan.
#[derive(Debug, Default)]
pub(super) struct Mixed {
    /// Each contact's last good message: what its next reaction answers.
    last: HashMap<usize, String>,
    /// Deliveries planned so far (every [`BAD_EVERY`]th holds a bad message).
    deliveries: usize,
    /// When each contact's first delivery is planned.
    wrote: HashMap<usize, Duration>,
}

impl Mixed {
    /// Plan step `n`, for contact `p` at `at`: in twenty, two statuses, two
    /// agent replies, two reads and fourteen deliveries (one reaction, one
    /// image, one location, eleven texts) — the shares of the scenario
    /// before it had kinds: 10% each, 70% deliveries. A contact an agent
    /// cannot answer yet (see [`AGENT_AFTER`]) writes instead.
    pub(super) fn next(&mut self, said: &mut Said, rng: &mut StdRng, p: usize, n: usize, at: Duration) -> Planned {
        let to = said.peer(p);
        let mut roll = rng.random_range(0..20);
        let window_open = self.wrote.get(&p).is_some_and(|w| *w + AGENT_AFTER <= at);
        if matches!(roll, 2 | 3) && !window_open {
            roll = 9;
        }
        let action = match roll {
            0 | 1 => Action::Status {
                to,
                // One of the fake send API's ids, whichever conversation it went to.
                id: format!("wamid.fake.{}", rng.random_range(1..=n.max(1))),
                status: ["delivered", "read"][rng.random_range(0..2)],
            },
            2 | 3 => Action::Agent {
                to,
                text: AGENT_TEXT.into(),
            },
            4 | 5 => Action::Read { to },
            _ => {
                let kind = self.kind(said, p, n, roll);
                self.wrote.entry(p).or_insert(at);
                Action::Webhook {
                    to,
                    messages: self.delivery(said, p, n, kind),
                }
            }
        };
        Planned {
            at,
            action,
            duplicate: false,
        }
    }

    /// The kind of a delivery's first message, by the step's roll.
    fn kind(&self, said: &mut Said, p: usize, n: usize, roll: u32) -> Kind {
        match roll {
            6 => match self.last.get(&p) {
                Some(id) => Kind::Reaction {
                    message_id: id.clone(),
                    emoji: "👍",
                },
                // Nothing to react to yet.
                None => Kind::Text(said.next_line(p)),
            },
            7 => Kind::Image {
                media_id: said.media_id(n),
                caption: said.next_line(p),
            },
            8 => Kind::Location {
                latitude: LATITUDE,
                longitude: LONGITUDE,
            },
            _ => Kind::Text(said.next_line(p)),
        }
    }

    /// The messages of a delivery starting with `first`: it alone, or, one
    /// delivery in [`BAD_EVERY`], it, a bad message (a bad sender and an
    /// over-long text in turn) and the contact's next line.
    fn delivery(&mut self, said: &mut Said, p: usize, n: usize, first: Kind) -> Vec<Message> {
        self.deliveries += 1;
        let mut messages = vec![Message {
            id: said.id(n, 0),
            kind: first,
        }];
        if self.deliveries % BAD_EVERY == 0 {
            let bad = if (self.deliveries / BAD_EVERY) % 2 == 1 {
                Bad::Sender
            } else {
                Bad::LongText
            };
            messages.push(Message {
                id: said.id(n, 1),
                kind: Kind::Bad(bad),
            });
            messages.push(Message {
                id: said.id(n, 2),
                kind: Kind::Text(said.next_line(p)),
            });
        }
        if let Some(last) = messages.iter().rev().find(|m| !m.is_bad()) {
            self.last.insert(p, last.id.clone());
        }
        messages
    }
}
