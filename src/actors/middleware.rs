//! The hook an embedding application gives the session actors.

/// Application code run before each step of an inbound message (business
/// validation, enrichment). An `Err` — or a panic — counts as a crash of
/// the session actor on that message: it is retried after a restart and
/// quarantined after `engine.max_crashes`.
pub trait Middleware: Send + Sync + 'static {
    fn before_step(&self, phone: &str, text: &str) -> std::result::Result<(), String>;
}
