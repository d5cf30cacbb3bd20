//! How a connection notices a database that stopped answering without
//! closing (a black-holed path, a frozen host): TCP keepalives for an idle
//! connection and `tcp_user_timeout` for one whose data goes unacknowledged,
//! so the kernel closes it within `database.tcp_user_timeout_s` and the
//! pool opens another — instead of the minutes of retransmissions the
//! defaults allow. A URL that sets any of these keeps its own.

/// `url` with keepalive and user-timeout parameters added (seconds; 0 adds nothing).
pub fn with_dead_peer_detection(url: &str, tcp_user_timeout_s: u64) -> String {
    if tcp_user_timeout_s == 0 || url.contains("keepalives") || url.contains("tcp_user_timeout") {
        return url.to_string();
    }
    let idle = (tcp_user_timeout_s / 2).max(1);
    let params = [
        ("keepalives", 1),
        ("keepalives_idle", idle),
        ("keepalives_interval", 1),
        ("keepalives_retries", 3),
        ("tcp_user_timeout", tcp_user_timeout_s),
    ];
    let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let mut out = url.to_string();
    for (n, (k, v)) in params.iter().enumerate() {
        if is_uri {
            let sep = if n == 0 && !url.contains('?') { '?' } else { '&' };
            out.push_str(&format!("{sep}{k}={v}"));
        } else {
            out.push_str(&format!(" {k}={v}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_dead_peer_detection as detect;

    #[test]
    fn parameters_are_added_in_the_urls_form_unless_it_has_its_own() {
        assert_eq!(
            detect("postgres://u:p@h:5432/db", 10),
            "postgres://u:p@h:5432/db?keepalives=1&keepalives_idle=5&keepalives_interval=1&keepalives_retries=3&tcp_user_timeout=10"
        );
        assert!(
            detect("postgres://h/db?sslmode=disable", 4).starts_with("postgres://h/db?sslmode=disable&keepalives=1")
        );
        assert!(detect("host=h dbname=db", 10).ends_with(" tcp_user_timeout=10"));
        assert_eq!(
            detect("postgres://h/db?keepalives=0", 10),
            "postgres://h/db?keepalives=0"
        );
        assert_eq!(detect("postgres://h/db", 0), "postgres://h/db");
        // The URL must still parse.
        let parsed: tokio_postgres::Config = detect("postgres://u:p@h:5432/db", 10).parse().unwrap();
        assert_eq!(parsed.get_tcp_user_timeout(), Some(&std::time::Duration::from_secs(10)));
    }
}
