//! The WhatsApp Cloud API: inbound webhooks ([`webhook`]) and the send API
//! ([`sender`]).

pub mod cloud_api;
pub mod kinds;
pub mod read_receipts;
pub mod sender;
pub mod split;
pub mod templates;
pub mod webhook;
pub mod window;
