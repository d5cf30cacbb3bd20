//! Standard Webhooks signatures (<https://www.standardwebhooks.com>):
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//! under the key of a `whsec_` secret, so a consumer verifies with that
//! project's libraries in any language.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key, from a `whsec_<base64>` secret.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn parse(secret: &str) -> Result<Self, String> {
        crate::config::webhook_key(secret).map(Self)
    }

    /// The `webhook-signature` header's value for message `id` sent at
    /// `timestamp` (Unix seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("v1,{sig}")
    }

    /// Whether `header` (space-separated `v1,<sig>` entries, several during
    /// a key rotation) holds this key's signature, compared in constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        let expected = self.sign(id, timestamp, body);
        header.split(' ').fold(false, |ok, given| {
            crate::whatsapp::webhook::secure_eq(given, &expected) | ok
        })
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::config::REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own test vector (its reference libraries' tests).
    #[test]
    fn the_specifications_test_vector_signs_alike() {
        let key = Key::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // The prefix is optional, as in the libraries.
        let bare = Key::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            bare.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            sig
        );
    }

    #[test]
    fn verification_takes_any_of_several_signatures_and_refuses_a_changed_body() {
        let key = Key::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let good = key.sign("msg_1", 1614265330, body);
        assert!(key.verify("msg_1", 1614265330, body, &format!("v1,b2xkc2lnbmF0dXJl {good}")));
        assert!(!key.verify("msg_1", 1614265330, br#"{"test": 1}"#, &good));
        assert!(!key.verify("msg_2", 1614265330, body, &good));
        assert!(!key.verify("msg_1", 1614265331, body, &good));
        assert!(Key::parse("whsec_***").is_err());
        assert!(Key::parse("whsec_").is_err());
    }
}
