//! What a client run did: each connection's timeline and outcome, and the
//! whole run's, as the time chart and `--json` take them.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;

use super::log::py_bytes;

/// Bytes sent or received at a moment of a connection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Chunk {
    /// Seconds since the run started.
    pub at: f64,
    /// The bytes, shown in JSON as a Python bytes literal.
    #[serde(serialize_with = "as_py_bytes")]
    pub bytes: Vec<u8>,
}

/// One connection's timeline and outcome. Times are seconds since the run
/// started.
#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    /// `conn0`, `conn1`, ... as in the article.
    pub name: String,
    /// When it started to connect.
    pub arrival: f64,
    /// When its `*` arrived: from then on the server was serving it.
    /// `None` if it never did.
    pub admitted: Option<f64>,
    /// When it closed (or gave up).
    pub done: f64,
    /// What it sent, when.
    pub sent: Vec<Chunk>,
    /// What it received after the `*`, chunk by chunk, as the reads
    /// returned it.
    pub received: Vec<Chunk>,
    /// Everything received after the `*`.
    #[serde(serialize_with = "as_py_bytes")]
    pub reply: Vec<u8>,
    /// Why this connection failed, if it did: no `*`, an I/O error, a
    /// timeout, or a reply that differs from the protocol's.
    pub failure: Option<String>,
}

impl Connection {
    /// True if the connection was served and got exactly the reply it
    /// was owed.
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The server, as described by [`Options::server`](super::Options::server) or by its address.
    pub server: String,
    /// The address the connections went to.
    pub addr: SocketAddr,
    /// When the run started, local time.
    pub started: String,
    /// Seconds from the start until the last connection ended.
    pub elapsed: f64,
    /// The schedule each connection followed, as text in the script format.
    pub script: String,
    /// The reply each connection was owed.
    #[serde(serialize_with = "as_py_bytes")]
    pub expected: Vec<u8>,
    /// Every connection, in the order they were named.
    pub connections: Vec<Connection>,
    /// The log lines, in the order they were written.
    #[serde(skip)]
    pub log: Vec<String>,
}

impl Report {
    /// True if every connection was served and got the right reply.
    pub fn ok(&self) -> bool {
        self.connections.iter().all(Connection::ok)
    }

    /// One line per failed connection: `conn2: ...`.
    pub fn failures(&self) -> Vec<String> {
        self.connections
            .iter()
            .filter_map(|c| c.failure.as_ref().map(|f| format!("{}: {f}", c.name)))
            .collect()
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Every field is plain data with string keys: this cannot fail.
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// Writes [`Report::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }
}

fn as_py_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&py_bytes(bytes))
}
