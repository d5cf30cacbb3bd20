//! The WhatsApp Cloud API: inbound webhooks ([`webhook`]) and the send API
//! ([`sender`]).

pub mod kinds;
pub mod sender;
pub mod webhook;
