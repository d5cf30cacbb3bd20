//! A network namespace of the caller's own (a test's, or `load
//! --db-black-hole-at`), joined to this one by a veth pair, with nftables
//! inside it to drop packets: a black-holed path (nothing answers, nothing
//! closes, the sender's kernel retransmits into the void) without touching
//! the machine's other traffic. Needs root, `ip` and `nft`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// Namespaces this process made so far: a name and a subnet each.
static MADE: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    name: String,
    /// Our end of the pair (the namespace's goes with it).
    host_if: String,
    /// The namespace's end of the pair (this namespace routes to it).
    pub inner: Ipv4Addr,
}

/// Runs `args`; their error output when they fail.
fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("{} (a network namespace needs iproute2 and nftables)", args[0]))?;
    anyhow::ensure!(
        out.status.success(),
        "{args:?}: {} (a network namespace needs root)",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Netns {
    /// A namespace of the caller's own, reachable at [`Netns::inner`].
    pub fn create() -> anyhow::Result<Self> {
        let (pid, n) = (std::process::id(), MADE.fetch_add(1, Ordering::SeqCst));
        let name = format!("sbtest-{pid}-{n}");
        // A /30 of its own in 10.213.0.0/16, from the process id and the
        // count (test processes whose ids agree mod 256 could meet).
        let slot = (pid % 256) * 64 + n % 64;
        let (a, b) = ((slot / 64) as u8, ((slot % 64) * 4) as u8);
        let (host, inner) = (Ipv4Addr::new(10, 213, a, b + 1), Ipv4Addr::new(10, 213, a, b + 2));
        // Interface names: 15 characters at most.
        let (host_if, inner_if) = (format!("sbh{pid}x{n}"), format!("sbn{pid}x{n}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let ns = Self {
            name,
            host_if: host_if.clone(),
            inner,
        };
        run(&["ip", "netns", "add", &ns.name])?;
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if])?;
        run(&["ip", "link", "set", &inner_if, "netns", &ns.name])?;
        run(&["ip", "addr", "add", &format!("{host}/30"), "dev", &host_if])?;
        run(&["ip", "link", "set", &host_if, "up"])?;
        ns.exec(&["ip", "addr", "add", &format!("{inner}/30"), "dev", &inner_if])?;
        ns.exec(&["ip", "link", "set", &inner_if, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A listener on a free port of [`Netns::inner`], inside the namespace
    /// (a thread joins it to make the socket; the socket stays there).
    pub fn listen(&self) -> anyhow::Result<TcpListener> {
        let (path, at) = (
            format!("/var/run/netns/{}", self.name),
            SocketAddr::from((self.inner, 0)),
        );
        std::thread::spawn(move || -> anyhow::Result<TcpListener> {
            let ns = std::fs::File::open(&path).with_context(|| path.clone())?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("joining {path} (needs root)"))?;
            Ok(TcpListener::bind(at)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread joining the namespace panicked"))?
    }

    /// Drops every packet to and from `port` inside the namespace: nothing
    /// is answered, acknowledged or closed.
    pub fn black_hole(&self, port: u16) -> anyhow::Result<()> {
        let rules = format!(
            "table inet blackhole {{ \
               chain input {{ type filter hook input priority 0; tcp dport {port} drop; }}; \
               chain output {{ type filter hook output priority 0; tcp sport {port} drop; }}; }}"
        );
        self.exec(&["nft", &rules])
    }

    /// The path works again.
    pub fn heal(&self) -> anyhow::Result<()> {
        self.exec(&["nft", "delete", "table", "inet", "blackhole"])
    }
}

impl Drop for Netns {
    /// Deleting the namespace deletes its end of the pair, and with it ours
    /// (deleted by name too, in case it never moved in).
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}
