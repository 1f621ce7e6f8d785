//! The client's log, in the format of the article's Python client, so that
//! a run can be compared with the article's line by line:
//!
//! ```text
//! INFO:2017-09-20 06:31:56,632:conn1 connected...
//! INFO:2017-09-20 06:31:56,632:conn1 sending b'^abc$de^abte$f'
//! INFO:2017-09-20 06:31:56,633:conn1 received b'b'
//! ```
//!
//! That is Python's `logging` with `format='%(levelname)s:%(asctime)s:%(message)s'`:
//! local time with milliseconds after a comma, and bytes shown as Python
//! shows a `bytes` object ([`py_bytes`]).

use std::io::Write;
use std::sync::Mutex;

/// How important a line is; printed as Python's `levelname`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The normal course of a connection.
    Info,
    /// Something went wrong with one connection.
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Error => "ERROR",
        }
    }
}

/// Formats one line as the article's client would, stamped now.
pub fn line(level: Level, message: &str) -> String {
    let now = chrono::Local::now();
    format!(
        "{}:{}:{message}",
        level.name(),
        now.format("%Y-%m-%d %H:%M:%S,%3f")
    )
}

/// `bytes` as Python's `repr` shows them: `b'cdbcuf'`, printable ASCII as
/// itself, `\t`, `\n`, `\r` and `\\` escaped, other bytes as `\xNN`, and
/// double quotes around it if it holds a `'` but no `"`.
///
/// ```
/// use concur::client::log::py_bytes;
///
/// assert_eq!(py_bytes(b"^abc$"), "b'^abc$'");
/// assert_eq!(py_bytes(b"\x00\xff\n"), r"b'\x00\xff\n'");
/// assert_eq!(py_bytes(b"it's"), r#"b"it's""#);
/// ```
pub fn py_bytes(bytes: &[u8]) -> String {
    let quote = if bytes.contains(&b'\'') && !bytes.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::with_capacity(bytes.len() + 3);
    out.push('b');
    out.push(quote as char);
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            _ if b == quote => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote as char);
    out
}

/// The log of one run: kept whole for the report, and echoed to standard
/// error as it happens when asked. Connections log from many threads; one
/// lock keeps each line whole and the kept order the printed order.
#[derive(Debug, Default)]
pub struct Log {
    echo: bool,
    lines: Mutex<Vec<String>>,
}

impl Log {
    /// A log that echoes each line to standard error if `echo`.
    pub fn new(echo: bool) -> Self {
        Log {
            echo,
            lines: Mutex::default(),
        }
    }

    /// Adds a line stamped now.
    pub fn log(&self, level: Level, message: &str) {
        let line = line(level, message);
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if self.echo {
            // A closed standard error must not stop the run.
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        lines.push(line);
    }

    /// Every line so far.
    pub fn into_lines(self) -> Vec<String> {
        self.lines.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_as_python_shows_them() {
        let cases: [(&[u8], &str); 8] = [
            (b"", "b''"),
            (b"bcdbcuf23436bc1111", "b'bcdbcuf23436bc1111'"),
            (b"\x00\x01\x7f\x80\xff", r"b'\x00\x01\x7f\x80\xff'"),
            (b"a\\b\tc\nd\re", r"b'a\\b\tc\nd\re'"),
            (b"'", r#"b"'""#),
            (b"\"", r#"b'"'"#),
            (b"'\"", r#"b'\'"'"#),
            (b" ~", "b' ~'"),
        ];
        for (bytes, shown) in cases {
            assert_eq!(py_bytes(bytes), shown);
        }
    }

    #[test]
    fn lines_have_the_logging_module_layout() {
        let l = line(Level::Info, "conn0 connected...");
        let (level, rest) = l.split_once(':').unwrap();
        assert_eq!(level, "INFO");
        // "2017-09-20 06:31:56,632" is 23 characters.
        let (stamp, message) = rest.split_at(23);
        assert_eq!(message, ":conn0 connected...");
        assert_eq!(&stamp[19..20], ",", "{stamp}");
        assert!(stamp[20..].bytes().all(|b| b.is_ascii_digit()), "{stamp}");
    }
}
