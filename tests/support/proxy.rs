//! A TCP proxy that can stall: while stalled it forwards nothing either
//! way and closes nothing — a server that stopped answering (a frozen host,
//! a full disk, a black-holed path as the client's kernel sees it until its
//! user timeout). Healing forwards what waited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    stalled: Arc<AtomicBool>,
    gate: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding each connection to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let (gate, _) = watch::channel(false);
        let open = gate.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, open.subscribe()));
                tokio::spawn(pump(sr, cw, open.subscribe()));
            }
        });
        Self { port, stalled, gate }
    }

    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        let _ = self.gate.send(true);
    }

    pub fn heal(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        let _ = self.gate.send(false);
    }
}

/// Copies `from` to `to`, holding each chunk while the gate says stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *stalled.borrow_and_update() {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
