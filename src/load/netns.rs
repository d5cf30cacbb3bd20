//! A test's own network namespace, joined to this one by a veth pair, with
//! nftables inside it to drop packets: a black-holed path (nothing answers,
//! nothing closes, the sender's kernel retransmits into the void) without
//! touching the machine's other traffic. Needs root, `ip` and `nft`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;

pub struct Netns {
    name: String,
    /// The namespace's end of the pair (this namespace routes to it).
    pub inner: Ipv4Addr,
}

/// Runs `args`, failing the test with their output when they fail.
fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the network-namespace tests need iproute2 and nftables)",
            args[0]
        )
    });
    assert!(
        out.status.success(),
        "{args:?}: {} (the network-namespace tests need root)",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A namespace of this process's own, reachable at [`Netns::inner`].
    pub fn create() -> Self {
        let pid = std::process::id();
        let name = format!("sbtest-{pid}");
        // A /30 of its own, from the process id (one namespace per process).
        let (a, b) = (((pid >> 6) % 250) as u8 + 1, ((pid % 64) * 4) as u8);
        let (host, inner) = (Ipv4Addr::new(10, 213, a, b + 1), Ipv4Addr::new(10, 213, a, b + 2));
        let (host_if, inner_if) = (format!("sbh{pid}"), format!("sbn{pid}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Self { name, inner };
        run(&["ip", "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if]);
        run(&["ip", "link", "set", &inner_if, "netns", &ns.name]);
        run(&["ip", "addr", "add", &format!("{host}/30"), "dev", &host_if]);
        run(&["ip", "link", "set", &host_if, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{inner}/30"), "dev", &inner_if]);
        ns.exec(&["ip", "link", "set", &inner_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all);
    }

    /// A listener on a free port of [`Netns::inner`], inside the namespace
    /// (a thread joins it to make the socket; the socket stays there).
    pub fn listen(&self) -> TcpListener {
        let (path, at) = (
            format!("/var/run/netns/{}", self.name),
            SocketAddr::from((self.inner, 0)),
        );
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns (needs root)");
            TcpListener::bind(at).unwrap()
        })
        .join()
        .unwrap()
    }

    /// Drops every packet to and from `port` inside the namespace: nothing
    /// is answered, acknowledged or closed.
    pub fn black_hole(&self, port: u16) {
        let rules = format!(
            "table inet blackhole {{ \
               chain input {{ type filter hook input priority 0; tcp dport {port} drop; }}; \
               chain output {{ type filter hook output priority 0; tcp sport {port} drop; }}; }}"
        );
        self.exec(&["nft", &rules]);
    }

    /// The path works again.
    pub fn heal(&self) {
        self.exec(&["nft", "delete", "table", "inet", "blackhole"]);
    }
}

impl Drop for Netns {
    /// Deleting the namespace deletes its end of the pair, and with it ours.
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
