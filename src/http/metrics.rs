//! `GET /metrics`: the server's counters for Prometheus, built with
//! `prometheus-client` and read from the server's own counters at each
//! scrape (a [`Collector`]), so a scrape costs the models nothing but
//! atomic loads.
//!
//! Two formats, chosen by the scraper's `Accept` header as the official Go
//! client chooses: OpenMetrics 1.0 to whoever names
//! `application/openmetrics-text` (Prometheus itself does), and the
//! classic text format 0.0.4 to everyone else (`curl`, `promtool check
//! metrics`, older scrapers). `prometheus-client` writes only
//! OpenMetrics; the classic text is made from it by `classic`, which
//! knows the three places the two differ for what this server exposes.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `concur_clients_accepted_total` | counter | connections taken from the listen backlog |
//! | `concur_clients_served_total` | counter | clients that closed and got every answer |
//! | `concur_clients_failed_total` | counter | clients ended by an error |
//! | `concur_clients_timed_out_total` | counter | clients closed by the idle or write timeout |
//! | `concur_clients_rejected_total` | counter | clients refused (over the cap, or out of memory) |
//! | `concur_clients_closed_at_shutdown_total` | counter | clients the shutdown ended |
//! | `concur_accept_errors_total` | counter | failed `accept` calls |
//! | `concur_received_bytes_total`, `concur_sent_bytes_total` | counter | bytes from and to clients |
//! | `concur_clients` | gauge | clients being served now |
//! | `concur_pool_workers`, `concur_pool_workers_busy` | gauge | pool workers, and those serving a client |
//! | `concur_pool_waiting_clients` | gauge | clients accepted by the pool, waiting for a worker |
//! | `concur_client_duration_seconds` | histogram | how long clients were served |
//! | `concur_admission_wait_seconds` | histogram | from accept to being taken on |

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use std::sync::Arc;

use crate::server::Counters;

/// The server's counters, read at each scrape.
#[derive(Debug)]
struct Figures(Arc<Counters>);

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.summary();
        for (name, help, value) in [
            (
                "concur_clients_accepted",
                "Connections taken from the listen backlog.",
                s.accepted,
            ),
            (
                "concur_clients_served",
                "Clients that closed their side and got every answer.",
                s.served,
            ),
            (
                "concur_clients_failed",
                "Clients ended by an error of their connection, a protocol violation or a panic.",
                s.failed,
            ),
            (
                "concur_clients_timed_out",
                "Clients closed by the idle or the write timeout.",
                s.timed_out,
            ),
            (
                "concur_clients_rejected",
                "Clients refused: over the connection cap, or under a memory limit.",
                s.rejected,
            ),
            (
                "concur_clients_closed_at_shutdown",
                "Clients the shutdown ended.",
                s.closed_at_shutdown,
            ),
            (
                "concur_accept_errors",
                "Failed accept calls (not clients).",
                s.accept_errors,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            ("concur_received", "Bytes read from clients.", s.bytes_in),
            (
                "concur_sent",
                "Bytes written to clients, greetings included.",
                s.bytes_out,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let unit = Some(&Unit::Bytes);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                unit,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            ("concur_clients", "Clients being served now.", s.clients_now),
            (
                "concur_pool_workers",
                "Worker threads of the pool (0 for other models).",
                s.pool_threads,
            ),
            (
                "concur_pool_workers_busy",
                "Pool workers serving a client.",
                s.pool_busy,
            ),
            (
                "concur_pool_waiting_clients",
                "Clients accepted by the pool and waiting for a worker.",
                s.pool_waiting,
            ),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let times = self.0.times();
        times.served.encode(encoder.encode_descriptor(
            "concur_client_duration",
            "How long clients were served, from being taken on to their end.",
            Some(&Unit::Seconds),
            times.served.metric_type(),
        )?)?;
        times.admission.encode(encoder.encode_descriptor(
            "concur_admission_wait",
            "How long accepted clients waited to be taken on (in a pool, its hand-off).",
            Some(&Unit::Seconds),
            times.admission.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The exposition formats a scraper can get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text, ending in `# EOF`.
    OpenMetrics,
    /// Prometheus's classic text format, version 0.0.4.
    Classic,
}

impl Format {
    /// The format for a request with this `Accept` header: OpenMetrics if
    /// it names `application/openmetrics-text` with a quality above 0,
    /// the classic text otherwise (also with no header, or one that cannot
    /// be read).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut params = range.split(';').map(str::trim);
                let media = params.next().unwrap_or("");
                // A quality of 0 means "not this one" (RFC 9110 §12.4.2).
                let refused = params.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The text of one scrape of `counters`, in `format`.
pub fn render(counters: &Arc<Counters>, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures(Arc::clone(counters))));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    match format {
        Format::OpenMetrics => text,
        Format::Classic => classic(&text),
    }
}

/// OpenMetrics text as the classic text format. For the counters, gauges
/// and histograms of this server they differ in three things: a counter's
/// family is named with its `_total` in the classic format (its `# HELP`
/// and `# TYPE` lines must name the samples), there is no `# UNIT` line,
/// and no `# EOF`. Everything else (sample lines, `+Inf`, label quoting,
/// `# HELP` text without `"` or newlines) is the same in both.
fn classic(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, what) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {what}"))
        });
        match described {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_to_whoever_asks_for_it() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("Application/OpenMetrics-Text")),
            Format::OpenMetrics
        );
        for classic in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4;q=0.5,application/openmetrics-text;q=0"),
            Some(""),
        ] {
            assert_eq!(Format::negotiate(classic), Format::Classic, "{classic:?}");
        }
    }

    #[test]
    fn the_classic_text_names_counters_with_their_total_and_has_no_unit_or_eof() {
        let counters = Arc::<Counters>::default();
        let open = render(&counters, Format::OpenMetrics);
        assert!(open.contains("# TYPE concur_clients_accepted counter\n"));
        assert!(open.contains("# UNIT concur_received_bytes bytes\n"));
        assert!(open.ends_with("# EOF\n"));

        let text = render(&counters, Format::Classic);
        assert!(text.contains(
            "# HELP concur_clients_accepted_total Connections taken from the listen backlog.\n\
             # TYPE concur_clients_accepted_total counter\n\
             concur_clients_accepted_total 0\n"
        ));
        assert!(text.contains("# TYPE concur_received_bytes_total counter\n"));
        assert!(text.contains("# TYPE concur_clients gauge\nconcur_clients 0\n"));
        assert!(text.contains("# TYPE concur_client_duration_seconds histogram\n"));
        assert!(
            !text.contains("# UNIT") && !text.contains("# EOF"),
            "{text}"
        );
        // The samples are the same lines in both.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(String::from)
                .collect()
        };
        assert_eq!(samples(&open), samples(&text));
    }
}
