//! The Prometheus endpoint: `serve --metrics HOST:PORT` answers
//! `GET /metrics` with the server's counters in the Prometheus text format
//! (OpenMetrics), built with `prometheus-client`.
//!
//! The figures are read from the server's own counters at each scrape
//! (a [`Collector`]), so serving a scrape costs the models nothing but
//! the atomic loads; the endpoint runs on a thread of its own, one
//! request at a time, each bounded in size and time, so a slow or hostile
//! scraper delays other scrapes, never a client. Anything but `GET` (or
//! `HEAD`) of `/metrics` gets a 4xx.
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

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::server::Counters;

/// The longest request head read, and how long a scraper may take to send
/// it or to take the answer.
const MAX_REQUEST: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

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

/// The text of one scrape of `counters`.
pub fn render(counters: &Arc<Counters>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures(Arc::clone(counters))));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

/// The endpoint, running; [`stop`](MetricsServer::stop) it or let it
/// live as long as the process.
pub struct MetricsServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it and waits for its thread.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Its thread waits in accept: a connection of our own wakes it.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `GET /metrics` for `counters` on `listener`, on a thread of its
/// own.
pub fn serve(listener: TcpListener, counters: Arc<Counters>) -> io::Result<MetricsServer> {
    let addr = listener.local_addr()?;
    let stopping = Arc::new(AtomicBool::new(false));
    let thread = {
        let stopping = Arc::clone(&stopping);
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    match stream {
                        // A scraper's failure is its own: nothing to do.
                        Ok(stream) => {
                            let _ = answer(stream, &counters);
                        }
                        // Out of descriptors, say: try again shortly
                        // rather than spin.
                        Err(_) => thread::sleep(Duration::from_millis(100)),
                    }
                }
            })?
    };
    Ok(MetricsServer {
        addr,
        stopping,
        thread: Some(thread),
    })
}

/// Reads one request head and answers it, then closes.
fn answer(mut stream: TcpStream, counters: &Arc<Counters>) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = match read_head(&mut stream)? {
        Some(head) => head,
        None => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
            );
        }
    };
    let (status, body, content_type): (&str, Vec<u8>, &str) = match route(&head) {
        Route::Metrics { head_only } => {
            let text = render(counters).into_bytes();
            let body = if head_only { Vec::new() } else { text };
            (
                "200 OK",
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        Route::NotFound => (
            "404 Not Found",
            b"only /metrics is here\n".to_vec(),
            "text/plain",
        ),
        Route::NotAllowed => (
            "405 Method Not Allowed",
            b"only GET and HEAD\n".to_vec(),
            "text/plain",
        ),
        Route::Bad => (
            "400 Bad Request",
            b"not an HTTP request\n".to_vec(),
            "text/plain",
        ),
    };
    respond(&mut stream, status, content_type, &body)
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// The request head, up to its blank line; `None` if it is longer than
/// [`MAX_REQUEST`]. A scraper that closes early gives what it sent.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
    Ok(Some(head))
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    NotAllowed,
    Bad,
}

/// What a request head asks for.
fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::Bad;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Route::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::NotAllowed,
    };
    // A query string changes nothing (`?` is how some scrapers bust
    // caches).
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics { head_only },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_by_method_and_path() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::NotAllowed);
        for bad in [
            &b""[..],
            b"\xff\xfe\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(route(bad), Route::Bad, "{bad:?}");
        }
    }
}
