//! Embedding switchboard in a plain tokio program: start the engine, feed it
//! a conversation, read the result, stop.
//!
//! `cargo run --example embed` (uses the embedded PostgreSQL under
//! `var/postgres`, or `SWITCHBOARD__DATABASE__URL` if set).

use switchboard::{Engine, InboundMessage};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = switchboard::config::load(std::path::Path::new("config.toml"), false)?.settings;
    switchboard::telemetry::init(&settings.log);
    let engine = Engine::start(settings).await?;

    let mut events = engine.subscribe();
    let phone = "5215512341234";
    for (i, text) in ["Hola", "Mi refri no enfría", "1234567890", "Sí"].iter().enumerate() {
        engine
            .submit_inbound(InboundMessage {
                user_id: None,
                business_number: None,
                phone: phone.into(),
                provider_message_id: format!("wamid.example.{}.{i}", std::process::id()),
                payload: serde_json::json!({"type": "text", "text": {"body": text}}),
                contact_name: Some("Ana".into()),
                contact_username: None,
            })
            .await?;
        let event = events.recv().await?;
        for m in event.messages {
            println!("{:>5}: {}", m.origin, m.body);
        }
    }
    let conversation = engine.conversation(phone).await?;
    println!("state: {conversation:?}");
    engine.shutdown().await?;
    Ok(())
}
