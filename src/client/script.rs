//! Schedules: what a simulated connection sends, and the pauses between.
//!
//! A schedule is a list of [`Step`]s. The article's is [`Script::article`];
//! others come from a small text format, one step a line:
//!
//! ```text
//! # The article's schedule. Blank lines and lines starting with '#' are ignored.
//! send ^abc$de^abte$f
//! pause 1.0
//! send xyz^123
//! pause 1.0
//! send 25$^ab0000$abab
//! pause 0.2
//! ```
//!
//! - `send BYTES` writes everything after the single space that follows
//!   `send`, with one write. Spaces are kept, trailing ones too. Escapes:
//!   `\\`, `\n`, `\r`, `\t`, `\s` (a space, handy at the end of a line) and
//!   `\xNN` for any byte; any other backslash is an error.
//! - `pause SECS` waits that many seconds (fractions allowed, 0 to 3600).
//!
//! After the last step the connection waits for the rest of its reply,
//! then closes. The reply a correct server owes is
//! [`Script::expected_reply`], computed with the crate's own
//! [`Processor`], so it never needs to be written down.

use std::fmt;
use std::time::Duration;

use crate::protocol::Processor;

/// The longest pause a script may ask for: a typo such as `pause 100000`
/// should be an error, not a client that seems to hang.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes with one write.
    Send(Vec<u8>),
    /// Wait this long before the next step.
    Pause(Duration),
}

/// A schedule of sends and pauses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    steps: Vec<Step>,
}

/// Why a script could not be read: the line (1-based) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    /// The line the problem is on, counting from 1.
    pub line: usize,
    /// What is wrong, and what is allowed instead.
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ScriptError {}

impl Script {
    /// A schedule of these steps.
    pub fn new(steps: Vec<Step>) -> Self {
        Script { steps }
    }

    /// The article's schedule: three sends, 1.0 s, 1.0 s and 0.2 s apart.
    /// Its reply ends in `1111`, which is how the article's client knows it
    /// has everything.
    pub fn article() -> Self {
        Script::new(vec![
            Step::Send(b"^abc$de^abte$f".to_vec()),
            Step::Pause(Duration::from_millis(1000)),
            Step::Send(b"xyz^123".to_vec()),
            Step::Pause(Duration::from_millis(1000)),
            Step::Send(b"25$^ab0000$abab".to_vec()),
            Step::Pause(Duration::from_millis(200)),
        ])
    }

    /// Reads the text format described in the [module docs](self).
    pub fn parse(text: &str) -> Result<Self, ScriptError> {
        let mut steps = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let fail = |message: String| ScriptError {
                line: i + 1,
                message,
            };
            // Only the line ending is trimmed: spaces at the end of a
            // `send` are bytes to send.
            let line = line.strip_suffix('\r').unwrap_or(line);
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (word, rest) = trimmed.split_once(' ').unwrap_or((trimmed, ""));
            match word {
                "send" => {
                    let bytes = unescape(rest).map_err(fail)?;
                    if bytes.is_empty() {
                        return Err(fail(
                            "`send` needs bytes to send after one space, such as `send ^abc$`"
                                .into(),
                        ));
                    }
                    steps.push(Step::Send(bytes));
                }
                "pause" => steps.push(Step::Pause(parse_pause(rest.trim()).map_err(fail)?)),
                other => {
                    return Err(fail(format!(
                        "unknown step {other:?}; a line is `send BYTES`, `pause SECS`, \
                         a comment starting with '#', or blank"
                    )));
                }
            }
        }
        if !steps.iter().any(|s| matches!(s, Step::Send(_))) {
            return Err(ScriptError {
                line: text.lines().count().max(1),
                message: "the script sends nothing; add at least one `send BYTES` line".into(),
            });
        }
        Ok(Script { steps })
    }

    /// Reads a script file; the error names the file and the line.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the script {}: {e}", path.display()))?;
        Script::parse(&text).map_err(|e| format!("in the script {}, {e}", path.display()))
    }

    /// The script in the text format, such that [`Script::parse`] reads
    /// it back to the same steps.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for step in &self.steps {
            match step {
                Step::Send(bytes) => {
                    text.push_str("send ");
                    text.push_str(&escape(bytes));
                }
                Step::Pause(d) => text.push_str(&format!("pause {}", d.as_secs_f64())),
            }
            text.push('\n');
        }
        text
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Everything the script sends, in order, as one stream.
    pub fn sent(&self) -> Vec<u8> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Send(b) => Some(b.as_slice()),
                Step::Pause(_) => None,
            })
            .flatten()
            .copied()
            .collect()
    }

    /// The reply a server that follows PROTOCOL.md owes for this schedule,
    /// after its `*`.
    pub fn expected_reply(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Processor::new().feed(&self.sent(), &mut out);
        out
    }

    /// The sum of the pauses: how long one connection takes at the least,
    /// once it is being served.
    pub fn duration(&self) -> Duration {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Pause(d) => *d,
                Step::Send(_) => Duration::ZERO,
            })
            .sum()
    }
}

impl Default for Script {
    fn default() -> Self {
        Script::article()
    }
}

fn parse_pause(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`pause` takes a number of seconds such as `pause 1.0`, not {s:?}"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d <= MAX_PAUSE)
        .ok_or_else(|| {
            format!(
                "pause {s} is out of range; give 0 to {} seconds",
                MAX_PAUSE.as_secs()
            )
        })
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            // A trailing space would be invisible, and a leading one could
            // be taken for the separator by a reader of the file.
            b' ' if i == 0 || i == bytes.len() - 1 => out.push_str("\\s"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b's') => out.push(b' '),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let value = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!(
                            "`\\x` needs two hex digits, such as `\\xff`, not `\\x{}`",
                            String::from_utf8_lossy(&hex)
                        )
                    })?;
                out.push(value);
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape `\\{}`; allowed: \\\\ \\n \\r \\t \\s \\xNN",
                    other as char
                ));
            }
            None => return Err("a line cannot end with a lone `\\`; write `\\\\`".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARTICLE_TEXT: &str = "# the article\n\
        send ^abc$de^abte$f\n\
        pause 1.0\n\
        \n\
        send xyz^123\n\
        pause 1\n\
        send 25$^ab0000$abab\n\
        pause 0.2\n";

    #[test]
    fn the_text_form_of_the_article_parses_to_the_article() {
        assert_eq!(Script::parse(ARTICLE_TEXT).unwrap(), Script::article());
    }

    #[test]
    fn the_article_owes_the_protocol_vector() {
        assert_eq!(Script::article().expected_reply(), b"bcdbcuf23436bc1111");
        assert_eq!(Script::article().duration(), Duration::from_millis(2200));
    }

    #[test]
    fn escapes_and_trailing_spaces_are_bytes() {
        let s = Script::parse("send ^a \\xff\\x00\\\\\\s\nsend  x \r\n").unwrap();
        assert_eq!(
            s.steps(),
            [
                Step::Send(b"^a \xff\x00\\ ".to_vec()),
                Step::Send(b" x ".to_vec())
            ]
        );
    }

    #[test]
    fn text_round_trips() {
        let odd = Script::new(vec![
            Step::Send(b" ^a\\b\n\r\t\x00\xff'\" ".to_vec()),
            Step::Pause(Duration::from_millis(250)),
            Step::Send(b"$".to_vec()),
        ]);
        for script in [Script::article(), odd] {
            assert_eq!(Script::parse(&script.to_text()).unwrap(), script);
        }
    }

    #[test]
    fn bad_lines_say_where_and_what_is_allowed() {
        let cases = [
            ("send a\nsnd b", 2, "unknown step"),
            ("send a\npause soon", 2, "number of seconds"),
            ("send a\npause -1", 2, "out of range"),
            ("send a\npause 99999", 2, "out of range"),
            ("send \\q", 1, "unknown escape"),
            ("send \\x4", 1, "two hex digits"),
            ("send \\xzz", 1, "two hex digits"),
            ("send", 1, "needs bytes"),
            ("pause 1\n# nothing sent", 2, "sends nothing"),
        ];
        for (text, line, needle) in cases {
            let e = Script::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
    }
}
