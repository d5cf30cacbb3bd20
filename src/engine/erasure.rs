//! Erasing a contact (`DELETE /api/contacts/{contact}`): through the
//! conversation's actor, so it comes after every message queued before it
//! and the actor forgets what it held; then what lives outside the
//! database — the media files, this process's cache of identifiers.

use super::mailbox::InFlightGuard;
use super::Engine;
use crate::actors::session::Erase;
use crate::db::erasure::Erased;
use crate::error::{Error, Result};
use crate::phone::mask;

impl Engine {
    /// Erases conversation `phone`'s personal data everywhere (see
    /// [`crate::db::erasure`]); `by` names who asked. Returns what changed.
    pub async fn erase_contact(&self, phone: &str, by: Option<&str>) -> Result<Erased> {
        self.check_running()?;
        let phone = self.inner.numbers.checked_key(phone).map_err(Error::InvalidInput)?;
        let _guard = InFlightGuard::new(&self.inner.in_flight);
        let contact = self.inner.numbers.split(&phone).1.to_string();
        let erase = Erase {
            contact: contact.clone(),
            by: by.map(str::to_string),
        };
        let erased = self.call(&phone, erase).await??;
        self.inner.contacts.retain(|_, key| key != &contact);
        for file in &erased.files {
            if let Err(e) = tokio::fs::remove_file(file).await {
                // Gone already is fine; anything else is said, the rows are erased.
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(error = %e, "an erased contact's media file stayed");
                }
            }
        }
        // Not the marker: beside a masked phone it would narrow the guess.
        tracing::info!(phone = %mask(&phone), "contact erased");
        Ok(erased)
    }
}
