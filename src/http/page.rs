//! What every page of the port is made from: the servers it watches, its
//! limits, a request with what its page may need, and how an answer's
//! body is built. Apart from `mod.rs` (which routes and serves) so that
//! the pages import these without importing the port that calls them.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::Notify;

use crate::server::{Config, Counters, OverLimit};

/// A server the port shows: what it is, and its counters (with its
/// timeline).
#[derive(Clone, Debug)]
pub struct Watched {
    pub(super) name: String,
    pub(super) model: &'static str,
    pub(super) settings: Vec<String>,
    pub(super) counters: Arc<Counters>,
}

impl Watched {
    /// The server `config` describes, counting into `counters` (the
    /// `Arc` that [`server::run_counted`](crate::server::run_counted) or
    /// [`Server::counters`](crate::server::Server::counters) shares).
    pub fn new(config: &Config, counters: Arc<Counters>) -> Watched {
        let secs = |d: Option<Duration>| match d {
            Some(d) => format!("{} s", d.as_secs_f64()),
            None => "off".to_string(),
        };
        let over = match config.over_limit {
            OverLimit::Wait => "wait",
            OverLimit::Reject => "reject",
        };
        Watched {
            name: config.describe(),
            model: config.model().name(),
            settings: vec![
                format!("--max-conns {} (over it: {over})", config.max_conns),
                format!("--idle-timeout {}", secs(config.idle_timeout)),
                format!("--write-timeout {}", secs(config.write_timeout)),
                format!("--drain-timeout {}", secs(Some(config.drain_timeout))),
            ],
            counters,
        }
    }

    /// Its counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// What the port's clients may hold (see the module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// How long a client has to send a whole request head.
    pub head_deadline: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
    /// The longest request head, in bytes (at least 8 KiB, hyper's least).
    pub max_head: usize,
    /// The most `/events` streams open at once; fewer than
    /// `max_connections`, since a stream is never evicted.
    pub max_streams: usize,
    /// How long a stream's connection may take nothing of it (its socket
    /// does not drain) before it is closed.
    pub stream_stall: Duration,
    /// How often a stream sends what happened since its last frame.
    pub stream_every: Duration,
    /// The most events of one server a stream's frame carries (and the most
    /// read from the ring at one time): a viewer further behind catches up
    /// over the next frames.
    pub events_per_frame: usize,
    /// The kernel's send buffer of each connection (`SO_SNDBUF`): with
    /// hyper's own, what a viewer that reads nothing can hold unsent
    /// before its stream stalls.
    pub send_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Prometheus sends its request at once; a few seconds spare a
            // slow network and bound what a dripping client can hold.
            head_deadline: Duration::from_secs(5),
            // A few scrapers and browsers; each costs a task and buffers.
            max_connections: 64,
            max_head: 8 * 1024,
            // A few browsers; each costs a task, a frame's buffer and the
            // HTTP thread's time ten times a second.
            max_streams: 8,
            // Generous for a browser tab in the background, which still
            // reads its stream.
            stream_stall: Duration::from_secs(10),
            // Smooth enough for the eye, rare enough to cost nothing.
            stream_every: Duration::from_millis(100),
            // About 100 KiB of JSON: a whole ring in under a second.
            events_per_frame: 2048,
            // A page (12 KiB) or a scrape (4 KiB) at once, and a second or
            // two of a busy server's events; Linux doubles it.
            send_buffer: 128 * 1024,
        }
    }
}

/// What the pages are made from.
pub(super) struct State {
    pub(super) servers: Vec<Watched>,
    pub(super) limits: Limits,
    /// `/events` streams open now.
    pub(super) streams: AtomicUsize,
}

/// A request, with what its page may need.
pub(super) struct Ask<'a> {
    pub(super) request: &'a Request<Incoming>,
    pub(super) state: &'a Arc<State>,
    /// Its connection's, for a stream to say when it last took a frame.
    pub(super) progress: &'a Arc<Progress>,
}

/// When a connection's stream last took a frame: the deadline of
/// [`Limits::stream_stall`] runs from there. hyper asks a body for its
/// next frame only when it has room to write it, so a viewer whose socket
/// does not drain stops the asking, and the stream is closed.
#[derive(Default)]
pub(super) struct Progress {
    streaming: Notify,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    pub(super) fn touch(&self) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.replace(Instant::now()).is_none() {
            self.streaming.notify_one();
        }
    }

    /// Returns once a stream on this connection has taken nothing for
    /// `limit`; never, on a connection that does not stream.
    pub(super) async fn stalled(&self, limit: Duration) {
        self.streaming.notified().await;
        loop {
            let last = *self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let due = last.unwrap_or_else(Instant::now) + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// The body of an answer: boxed, so that a page can be a stream as well
/// as bytes.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(super) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

pub(super) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
