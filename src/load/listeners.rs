//! Which process listens on a TCP port, from `/proc`: the soak samples the
//! processes serving the bases now, also one restarted under it (a kill, a
//! rolling restart) with a new pid.

/// The pid of the process listening on `port` (IPv4 or IPv6), if one is.
pub fn pid_listening_on(port: u16) -> Option<i32> {
    let inode = listening_inode(port)?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(target.as_str())) {
                return Some(pid);
            }
        }
    }
    None
}

/// The inode of the listening socket on `port`.
fn listening_inode(port: u16) -> Option<u64> {
    let wanted = format!(":{port:04X}");
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A: LISTEN), inode.
            if cols.len() > 9 && cols[1].ends_with(&wanted) && cols[3] == "0A" {
                return cols[9].parse().ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_found_by_its_listening_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(super::pid_listening_on(port), Some(std::process::id() as i32));
        drop(listener);
        assert_eq!(super::pid_listening_on(port), None);
    }
}
