//! Established TCP connections on the gateway's ports, from /proc/net/tcp
//! and /proc/net/tcp6 (so a drain knows when in-flight work is done).

/// Counts ESTABLISHED connections whose local port is one of `ports`.
pub fn established_on(ports: &[u16]) -> usize {
    // Nothing to count; and the tables are costly to read on a busy host
    // (tens of thousands of TIME_WAIT lines: ~50 ms of kernel time per read).
    if ports.is_empty() {
        return 0;
    }
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| count(&t, ports))
        .sum()
}

/// Counts in one /proc/net/tcp table.
pub fn count(table: &str, ports: &[u16]) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            let (Some(_sl), Some(local), Some(_remote), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return false;
            };
            // 01 = TCP_ESTABLISHED
            state == "01"
                && local
                    .rsplit_once(':')
                    .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
                    .is_some_and(|p| ports.contains(&p))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:2382 0100007F:D6A4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D6A4 0100007F:2382 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:2382 0100007F:D6A6 06 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
";

    #[test]
    fn counts_only_established_inbound_on_the_port() {
        // 0x2382 = 9090: one listener (0A), one established, one TIME_WAIT (06);
        // the client side of the pair has local port 0xD6A4.
        assert_eq!(count(TABLE, &[9090]), 1);
        assert_eq!(count(TABLE, &[80]), 0);
    }

    #[test]
    fn sees_a_real_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _s = l.accept().unwrap();
        assert_eq!(established_on(&[port]), 1);
    }
}
