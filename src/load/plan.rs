//! What a plan is made of: the actions a run takes, the messages of a
//! delivery and their kinds, and who says what (each contact's place in the
//! script). The scenarios (`scenario`, `mixed`) make plans of them; the
//! client turns them into requests (`payloads`).

use std::time::Duration;

use super::population::{Peer, Population};

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
    pub(super) fn new(seed: u64, population: Population, phones: usize) -> Self {
        Self {
            seed,
            population,
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
    pub(super) fn text(&mut self, p: usize, n: usize, at: Duration) -> Planned {
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
