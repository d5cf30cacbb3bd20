//! Who a run writes as: the business numbers its conversations are spread
//! over (`--numbers`), its contacts — a phone, or for a username-only user
//! (`--username-share`) a BSUID alone — and the conversation key the server
//! files each pair under (as `crate::numbers` makes it), by which the
//! checker looks each message up.

use crate::config::NumberSettings;

/// The home number's `phone_number_id`: the fake send API's (so the
/// harness's own server's `whatsapp.phone_number_id`), and the one every
/// delivery named before a run could spread over numbers. Number `k` is
/// this plus `k`.
const HOME_NUMBER: u64 = 1_098_765_432;

/// Contact `i`'s BSUID, for a username-only one, is `US.` and this plus `i`
/// (19 digits, the shape of Meta's examples).
const FIRST_BSUID: u64 = 1_349_120_865_530_274_191;

/// The `phone_number_id` of business number `k` (0: the home number).
pub fn number_id(k: usize) -> String {
    (HOME_NUMBER + k as u64).to_string()
}

/// The phone of contact `i` (13 digits, Mexican mobile format).
pub fn phone(i: usize) -> String {
    format!("5215{:09}", 100_000_000 + i)
}

/// The `[[whatsapp.numbers]]` of a server serving `numbers` numbers: each
/// but the home one (that is `whatsapp.phone_number_id`), every setting
/// left to the deployment's default (token, flow, rate).
pub(super) fn other_numbers(numbers: usize) -> Vec<NumberSettings> {
    (1..numbers)
        .map(|k| NumberSettings {
            phone_number_id: number_id(k),
            access_token: None,
            flow: None,
            rate_per_s: None,
            name: None,
            ..Default::default()
        })
        .collect()
}

/// How the server knows a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    /// By its phone (`wa_id`, `from`, `recipient_id`).
    Phone(String),
    /// A username-only user, by its BSUID alone (`user_id`, `from_user_id`,
    /// `recipient_user_id`): no phone anywhere in its deliveries.
    Username(String),
}

impl Contact {
    /// The identifier the API's paths and the conversation key name it by:
    /// its phone, else its BSUID (a contact first seen without a phone is
    /// keyed by its BSUID).
    pub fn id(&self) -> &str {
        match self {
            Contact::Phone(id) | Contact::Username(id) => id,
        }
    }
}

/// One conversation of a run: a business number × a contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The business number's `phone_number_id` (`metadata.phone_number_id`).
    pub number: String,
    /// Whether `number` is the home number, whose conversations the server
    /// keys by the contact alone.
    pub home: bool,
    pub contact: Contact,
}

impl Peer {
    /// The conversation key: the contact for the home number,
    /// `<phone_number_id>:<contact>` for any other.
    pub fn key(&self) -> String {
        if self.home {
            self.contact.id().to_string()
        } else {
            format!("{}:{}", self.number, self.contact.id())
        }
    }

    /// The query an API path adds to name the number: none for the home
    /// number, `?number=<phone_number_id>` for the others.
    pub fn query(&self) -> String {
        if self.home {
            String::new()
        } else {
            format!("?number={}", self.number)
        }
    }
}

/// How a run's contacts are made (`--numbers`, `--username-share`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Population {
    /// Business numbers, at least 1.
    pub numbers: usize,
    /// The share of contacts (0 to 1) that are username-only.
    pub username_share: f64,
}

impl Default for Population {
    /// One number, every contact known by its phone: the runs before either flag.
    fn default() -> Self {
        Self {
            numbers: 1,
            username_share: 0.0,
        }
    }
}

impl Population {
    /// The conversation of contact `i`: with number `i % numbers`;
    /// username-only when a fixed hash of `i` falls under the share, so the
    /// username-only contacts spread over every number (a rule on `i`'s
    /// parity would put them all on one number of two).
    pub fn peer(&self, i: usize) -> Peer {
        let k = i % self.numbers.max(1);
        let contact = if unit(i) < self.username_share {
            Contact::Username(format!("US.{}", FIRST_BSUID + i as u64))
        } else {
            Contact::Phone(phone(i))
        };
        Peer {
            number: number_id(k),
            home: k == 0,
            contact,
        }
    }
}

/// A fixed value in [0, 1) for `i`, well spread (splitmix64's finalizer):
/// the same contact is username-only in every run and every plan.
fn unit(i: usize) -> f64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::numbers::Numbers;

    #[test]
    fn the_keys_are_the_ones_the_server_files_conversations_under() {
        let mut s = Settings::default();
        s.whatsapp.phone_number_id = Some(number_id(0));
        s.whatsapp.numbers = other_numbers(3);
        let served = Numbers::from_settings(&s);
        assert_eq!(served.all().len(), 3);
        let population = Population {
            numbers: 3,
            username_share: 0.5,
        };
        for i in 0..60 {
            let p = population.peer(i);
            assert_eq!(
                p.key(),
                served.conversation(Some(p.number.as_str()), p.contact.id()),
                "{p:?}"
            );
            assert_eq!(served.checked_key(&p.key()), Ok(p.key()), "{p:?}");
            assert_eq!(p.home, p.key() == p.contact.id());
        }
    }

    #[test]
    fn contacts_are_valid_phones_or_bsuids_spread_over_every_number() {
        let count = |share: f64| {
            let population = Population {
                numbers: 2,
                username_share: share,
            };
            let peers: Vec<Peer> = (0..1000).map(|i| population.peer(i)).collect();
            for p in &peers {
                match &p.contact {
                    Contact::Phone(id) => assert_eq!(crate::phone::normalize(id).as_deref(), Ok(id.as_str())),
                    Contact::Username(id) => assert!(crate::phone::is_bsuid(id), "{id}"),
                }
            }
            let on = |k: usize| {
                peers
                    .iter()
                    .filter(|p| p.number == number_id(k) && matches!(p.contact, Contact::Username(_)))
                    .count()
            };
            (on(0), on(1))
        };
        assert_eq!(count(0.0), (0, 0));
        assert_eq!(count(1.0), (500, 500));
        let (home, other) = count(0.3);
        assert!(
            (100..200).contains(&home) && (100..200).contains(&other),
            "{home} {other}"
        );
    }
}
