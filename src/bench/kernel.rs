//! What the kernel dropped during a run: counters of the TCP stack from
//! `/proc/net/netstat` and `/proc/net/snmp`, read before and after, so that
//! a connect stall (a full listen backlog, a SYN sent again a second later)
//! is explained rather than hidden in a latency.
//!
//! The counters are the network namespace's, so whatever else the machine
//! does over loopback at the same time counts too.

use std::collections::BTreeMap;

/// The counters kept, as `(file, group, name)`.
const WATCHED: [(&str, &str, &str); 6] = [
    // Connections the listen backlog had no room for.
    ("/proc/net/netstat", "TcpExt", "ListenOverflows"),
    // SYNs dropped on a listening socket, overflows included.
    ("/proc/net/netstat", "TcpExt", "ListenDrops"),
    // SYNs sent again: each is a connect that waited a second or more.
    ("/proc/net/netstat", "TcpExt", "TCPSynRetrans"),
    // Retransmission timeouts of established connections.
    ("/proc/net/netstat", "TcpExt", "TCPTimeouts"),
    // Segments sent again, for any reason.
    ("/proc/net/snmp", "Tcp", "RetransSegs"),
    // Connects that failed.
    ("/proc/net/snmp", "Tcp", "AttemptFails"),
];

/// The counters that explain a stalled connect, which the table shows
/// when they move.
pub const CONNECT: [&str; 4] = [
    "ListenOverflows",
    "ListenDrops",
    "TCPSynRetrans",
    "AttemptFails",
];

/// A reading of the watched counters; missing ones (another kernel) are
/// left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    /// Reads them now.
    pub fn read() -> Self {
        let mut all = BTreeMap::new();
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for (group, name, value) in parse(&text) {
                if WATCHED
                    .iter()
                    .any(|&(f, g, n)| f == file && g == group && n == name)
                {
                    all.insert(name.to_string(), value);
                }
            }
        }
        Counters(all)
    }

    /// What changed from `before` to `self`, every watched counter present.
    pub fn since(&self, before: &Counters) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .map(|(k, v)| (k.clone(), v.saturating_sub(*before.0.get(k).unwrap_or(v))))
            .collect()
    }
}

/// The `(group, name, value)` triples of a `/proc/net/{netstat,snmp}`
/// file: each group is a line of names and a line of values, both starting
/// with `Group:`.
fn parse(text: &str) -> Vec<(&str, &str, u64)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((g1, names)), Some((g2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if g1 != g2 {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse() {
                out.push((g1, name, v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_of_lines_become_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 7 9\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 3\n";
        assert_eq!(
            parse(text),
            [
                ("TcpExt", "SyncookiesSent", 0),
                ("TcpExt", "ListenOverflows", 7),
                ("TcpExt", "ListenDrops", 9),
                ("IpExt", "InNoRoutes", 3),
            ]
        );
    }

    #[test]
    fn this_kernel_has_the_watched_counters() {
        let now = Counters::read();
        for (_, _, name) in WATCHED {
            assert!(now.0.contains_key(name), "{name} missing: {now:?}");
        }
        assert!(now.since(&now).values().all(|&d| d == 0));
    }
}
