//! A TCP proxy between the engine and PostgreSQL, for the faults that do
//! not close a connection (the tests' and `load --db-stall-at`,
//! `--db-black-hole-at` — listening in a network namespace —,
//! `--db-delay-ms`). Stalled, it forwards nothing either way and closes
//! nothing — a server that stopped answering (a frozen host, a full
//! disk's backlog; unlike a black-holed path, the proxy still takes the
//! client's bytes, so its kernel's user timeout does not fire); healing
//! forwards what waited. Slow, it holds each chunk a random delay before it
//! goes on (the machine has no netem).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropping it leaves its connections to the runtime.
pub struct Proxy {
    /// Where it listens.
    pub ip: std::net::IpAddr,
    pub port: u16,
    stalled: Arc<AtomicBool>,
    gate: watch::Sender<bool>,
    delay: Arc<Delay>,
    accepted: Arc<AtomicUsize>,
}

/// The delay of each chunk, in milliseconds, drawn from `min..=max`.
#[derive(Default)]
struct Delay {
    min: AtomicU64,
    max: AtomicU64,
}

impl Delay {
    fn draw(&self) -> std::time::Duration {
        let (min, max) = (self.min.load(Ordering::Relaxed), self.max.load(Ordering::Relaxed));
        let ms = if max > min { rand::random_range(min..=max) } else { min };
        std::time::Duration::from_millis(ms)
    }
}

impl Proxy {
    /// Listens on a free loopback port, forwarding each connection to `target`.
    pub async fn start(target: std::net::SocketAddr) -> std::io::Result<Self> {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0")?, target)
    }

    /// Forwards each connection `listener` accepts to `target` (a listener
    /// bound elsewhere: in a network namespace of its own, whose packets
    /// nftables can drop). Within a Tokio runtime.
    pub fn start_on(listener: std::net::TcpListener, target: std::net::SocketAddr) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let (ip, port) = (listener.local_addr()?.ip(), listener.local_addr()?.port());
        let stalled = Arc::new(AtomicBool::new(false));
        let (gate, _) = watch::channel(false);
        let open = gate.clone();
        let delay = Arc::new(Delay::default());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (slow, counted) = (delay.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, open.subscribe(), slow.clone()));
                tokio::spawn(pump(sr, cw, open.subscribe(), slow.clone()));
            }
        });
        Ok(Self {
            ip,
            port,
            stalled,
            gate,
            delay,
            accepted,
        })
    }

    /// `url` (a PostgreSQL URL `…@host[:port]/…`) with its host and port
    /// replaced by the proxy's.
    pub fn route(&self, url: &str) -> String {
        let scheme = url.find("://").map_or(0, |s| s + 3);
        let host = url.rfind('@').map_or(scheme, |at| at + 1);
        let path = url[host..].find('/').map_or(url.len(), |p| p + host);
        format!("{}{}:{}{}", &url[..host], self.ip, self.port, &url[path..])
    }

    /// Holds every chunk, either way, `min` to `max` before it goes on.
    pub fn slow(&self, min: std::time::Duration, max: std::time::Duration) {
        self.delay.min.store(min.as_millis() as u64, Ordering::Relaxed);
        self.delay.max.store(max.as_millis() as u64, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Forwards nothing from now on, closes nothing.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        let _ = self.gate.send(true);
    }

    /// Forwards again, what waited first.
    pub fn heal(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        let _ = self.gate.send(false);
    }
}

/// Chunks (of up to 64 KiB) a direction holds at most: far more than a
/// delayed path has in flight, a bound on what a long stall keeps.
const IN_FLIGHT: usize = 1024;

/// Copies `from` to `to`: each chunk goes on once the delay drawn for it
/// has passed since it was read (a latency, as on a long path: chunks in
/// flight overlap, and keep their order), and not while the gate says
/// stalled. At most `IN_FLIGHT` chunks wait: beyond, it stops reading, and
/// TCP's own window holds the sender back, as on a stalled path.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
    delay: Arc<Delay>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(IN_FLIGHT);
    let reading = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = tokio::time::Instant::now();
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Never before the chunk ahead of it: TCP keeps the order.
            last = last.max(tokio::time::Instant::now() + delay.draw());
            if tx.send((last, buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            while *stalled.borrow_and_update() {
                if stalled.changed().await.is_err() {
                    return;
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(reading, writing);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_url_is_routed_through_the_proxys_address() {
        let target = "127.0.0.1:5432".parse().unwrap();
        let p = super::Proxy::start(target).await.unwrap();
        let port = p.port;
        assert_eq!(
            p.route("postgres://u:pw@127.0.0.1:5432/db?sslmode=disable"),
            format!("postgres://u:pw@127.0.0.1:{port}/db?sslmode=disable")
        );
        assert_eq!(
            p.route("postgres://localhost:5432/db"),
            format!("postgres://127.0.0.1:{port}/db")
        );
        assert_eq!(
            p.route("postgres://u@localhost/db"),
            format!("postgres://u@127.0.0.1:{port}/db"),
            "to where the proxy listens"
        );
    }
}
