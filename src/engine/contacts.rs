//! Which conversation a sender's message belongs to: a contact is known by
//! its phone, its BSUID or both, and either finds its conversation.

use scoped_futures::ScopedFutureExt;
use serde_json::Value;

use super::Engine;
use crate::db::contacts;
use crate::error::{Error, Result};
use crate::phone;

/// Links kept in memory before the map is cleared (each is a few dozen
/// bytes; a miss costs one statement).
const CACHED_LINKS: usize = 200_000;

impl Engine {
    /// The contact key of a message from `phone` (a phone or a BSUID)
    /// with `user_id` (its BSUID, if given besides): the contact an
    /// identifier already leads to, else the phone, else the BSUID. A
    /// `user_changed_number` or `user_changed_user_id` notice links the new
    /// identifiers to the same contact.
    /// With the business number, it makes the conversation key.
    pub(super) async fn contact_key(&self, phone: &str, user_id: Option<&str>, payload: &Value) -> Result<String> {
        if phone::is_group(phone) {
            return Err(Error::InvalidInput(
                "a sender is a phone or a BSUID, not a group".into(),
            ));
        }
        let key = phone::contact_key(phone).map_err(Error::InvalidInput)?;
        let mut ids = vec![key.clone()];
        if let Some(u) = user_id.filter(|u| *u != key) {
            if !phone::is_bsuid(u) {
                return Err(Error::InvalidInput(format!("`{}` is not a BSUID", phone::mask(u))));
            }
            ids.push(u.to_string());
        }
        // Once each (one statement may not link an identifier twice).
        for id in changed_identifiers(payload) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        // Every identifier linked already (in memory): the preferred one's key.
        if let Some(k) = self.inner.contacts.get(&ids[0]).map(|k| k.value().clone()) {
            if ids[1..].iter().all(|id| self.inner.contacts.contains_key(id)) {
                return Ok(k);
            }
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let sent = crate::db::inbox::sent_at(payload);
        let links = self
            .inner
            .db
            .run("link_contact", |c| contacts::link(c, &refs, &key, sent).scope_boxed())
            .await?;
        if links.is_empty() {
            // Erased after this message was sent: a redelivery, which the
            // inbox drops; nothing linked, nothing cached.
            return Ok(key);
        }
        if self.inner.contacts.len() >= CACHED_LINKS {
            self.inner.contacts.clear();
        }
        // Each identifier is cached with its own stored link (two of them
        // may lead to different conversations when they were linked apart).
        for (id, contact) in &links {
            self.inner.contacts.insert(id.clone(), contact.clone());
        }
        // The most preferred identifier's link (the phone's, when given).
        links
            .iter()
            .find(|(id, _)| *id == ids[0])
            .map(|(_, contact)| contact.clone())
            .ok_or_else(|| Error::Unavailable("a contact link was not stored".into()))
    }
}

impl Engine {
    /// The contact key a status's recipient leads to: a phone is its
    /// own (or its link's); a BSUID its link's. `None` when it leads nowhere
    /// known (the status is then matched by its message id alone). A
    /// database failure is an error (the webhook answers 503), never a guess.
    pub(super) async fn recipient_key(&self, recipient: &str) -> Result<Option<String>> {
        if let Some(k) = self.inner.contacts.get(recipient) {
            return Ok(Some(k.value().clone()));
        }
        let Ok(id) = phone::contact_key(recipient) else {
            return Ok(None);
        };
        let linked = self
            .inner
            .db
            .run("linked_contact", |c| contacts::linked(c, &id).scope_boxed())
            .await?;
        if let Some(k) = &linked {
            self.inner.contacts.insert(id.clone(), k.clone());
        }
        Ok(match linked {
            Some(k) => Some(k),
            None if phone::is_bsuid(&id) => None,
            None => Some(id),
        })
    }
}

impl Engine {
    /// The conversation of the contact known as `contact` (a phone or a
    /// BSUID, either of a contact's) with business number `number` (none:
    /// the home number), as the API's paths name it. A number that is not
    /// served is not found.
    pub async fn conversation_of(&self, number: Option<&str>, contact: &str) -> Result<String> {
        let numbers = &self.inner.numbers;
        if let Some(n) = number.filter(|n| !numbers.all().is_empty() && numbers.get(n).is_none()) {
            return Err(Error::NotFound(format!("business number {n} is not served here")));
        }
        let id = phone::contact_key(contact).map_err(Error::InvalidInput)?;
        let key = self.recipient_key(&id).await?.unwrap_or(id);
        Ok(numbers.conversation(number, &key))
    }
}

/// The identifiers a `system` notice of an identity change names besides
/// its sender: for `user_changed_number`, the new phone (`wa_id`); for it
/// and `user_changed_user_id`, the new BSUID (`user_id`) and the previous
/// one (`previous_user_id`). Linked with the sender, they keep the
/// conversation: whichever of them was linked before leads the others to it.
fn changed_identifiers(payload: &Value) -> Vec<String> {
    let s = |p: &str| payload.pointer(p).and_then(Value::as_str);
    if s("/type") != Some("system") {
        return Vec::new();
    }
    let mut ids = Vec::new();
    match s("/system/type") {
        Some("user_changed_number") => ids.extend(s("/system/wa_id").and_then(|w| phone::normalize(w).ok())),
        Some("user_changed_user_id") => {}
        _ => return ids,
    }
    for field in ["/system/user_id", "/system/previous_user_id"] {
        ids.extend(s(field).filter(|u| phone::is_bsuid(u)).map(str::to_string));
    }
    ids
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::changed_identifiers;

    #[test]
    fn an_identity_notice_names_the_new_and_previous_identifiers() {
        let number = json!({"type": "system", "system": {"type": "user_changed_number",
            "wa_id": "5215598765432", "user_id": "US.222", "previous_user_id": "US.111"}});
        assert_eq!(changed_identifiers(&number), ["5215598765432", "US.222", "US.111"]);
        let bsuid = json!({"type": "system", "system": {"type": "user_changed_user_id",
            "user_id": "US.222", "previous_user_id": "US.111"}});
        assert_eq!(changed_identifiers(&bsuid), ["US.222", "US.111"]);
        let other = json!({"type": "system", "system": {"type": "customer_identity_changed", "user_id": "US.2"}});
        assert!(changed_identifiers(&other).is_empty());
        assert!(changed_identifiers(&json!({"type": "text", "system": {"user_id": "US.2"}})).is_empty());
    }
}
