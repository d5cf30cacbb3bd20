//! Template statuses as WhatsApp reports them (`message_template_status_update`),
//! and whether an agent's request (a text or a template) was stored before.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use scoped_futures::ScopedFutureExt;
use serde::Serialize;

use super::schema::template_status;
use super::Database;
use crate::db::error::Result;

/// A template's latest reported status.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct TemplateStatus {
    pub status: String,
    pub reason: Option<String>,
}

impl Database {
    /// The latest status reported for template `name` in `language`, if any.
    pub async fn template_status(&self, name: &str, language: &str) -> Result<Option<TemplateStatus>> {
        self.run("template_status", |c| {
            async move {
                Ok(template_status::table
                    .find((name, language))
                    .select((template_status::status, template_status::reason))
                    .first::<TemplateStatus>(c)
                    .await
                    .optional()?)
            }
            .scope_boxed()
        })
        .await
    }

    /// Records (replaces) the status of template `name` in `language`.
    pub async fn record_template_status(
        &self,
        name: &str,
        language: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        self.run("record_template_status", |c| {
            async move {
                diesel::insert_into(template_status::table)
                    .values((
                        template_status::name.eq(name),
                        template_status::language.eq(language),
                        template_status::status.eq(status),
                        template_status::reason.eq(reason),
                    ))
                    .on_conflict((template_status::name, template_status::language))
                    .do_update()
                    .set((
                        template_status::status.eq(status),
                        template_status::reason.eq(reason),
                        template_status::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute(c)
                    .await?;
                Ok(())
            }
            .scope_boxed()
        })
        .await
    }
}

impl Database {
    /// Whether conversation `phone` has an outbound message keyed `key`
    /// (an agent's request stored before: its retry is answered "stored",
    /// whatever has changed since).
    pub async fn outbox_key_exists(&self, phone: &str, key: &str) -> Result<bool> {
        use super::schema::outbox;
        self.run("outbox_key_exists", |c| {
            async move {
                Ok(diesel::select(diesel::dsl::exists(
                    outbox::table
                        .filter(outbox::phone.eq(phone))
                        .filter(outbox::idempotency_key.eq(key)),
                ))
                .get_result::<bool>(c)
                .await?)
            }
            .scope_boxed()
        })
        .await
    }
}
