//! The live page: the article's time chart of a running server, drawn in
//! the browser as it happens, from the server's [`Timeline`].
//!
//! - `GET /`: the page, HTML, script and style in one document embedded
//!   in the binary (`live/page.html`, `live/page.js`), nothing fetched from
//!   elsewhere;
//! - `GET /events`: what the page reads, as Server-Sent Events: a `hello`
//!   naming the servers watched, then every [`Limits::stream_every`] the
//!   events since the last (`events`, one JSON object a line), a `missed`
//!   notice when the viewer fell so far behind that the ring moved on past
//!   some, and a `status` with each server's clock and counters. A new
//!   stream starts from the oldest event the ring still holds, so a page
//!   opened late shows the clients still connected;
//! - `GET /clients`: the same events folded into one row per client, as
//!   JSON, for scripts.
//!
//! Nothing here writes to the ring or holds its lock longer than a copy of
//! [`Limits::events_per_frame`] events: the models never wait for a
//! viewer. What a viewer may hold is bounded: at most
//! [`Limits::max_streams`] streams at once (a newcomer over it gets a
//! 503), at most one frame prepared ahead of what the connection has
//! taken, and a stream whose connection has taken nothing for
//! [`Limits::stream_stall`] is closed.
//!
//! [`Timeline`]: crate::server::timeline::Timeline

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::page::{Ask, Body, Limits, Progress, State, full, text};
// Where it was defined first: `concur::http::live::Watched` still names it.
pub use super::page::Watched;
use crate::server::timeline::{Event, Missed, What};
use crate::server::{Counters, Summary};

/// The page: one document, so that it is whole wherever it is saved.
const PAGE: &str = concat!(
    include_str!("live/page.html"),
    "<script>\n",
    include_str!("live/page.js"),
    "</script>\n</body>\n</html>\n"
);

/// How a server is named to the page and in `/clients`.
#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
    model: &'a str,
    settings: &'a [String],
}

impl<'a> From<&'a Watched> for Named<'a> {
    fn from(w: &'a Watched) -> Self {
        Named {
            name: &w.name,
            model: w.model,
            settings: &w.settings,
        }
    }
}

/// The counters as the page and `/clients` show them.
#[derive(Serialize)]
struct Figures {
    accepted: u64,
    served: u64,
    failed: u64,
    timed_out: u64,
    rejected: u64,
    closed_at_shutdown: u64,
    clients_now: u64,
    max_clients: u64,
    bytes_in: u64,
    bytes_out: u64,
    accept_errors: u64,
    pool_threads: u64,
    pool_busy: u64,
    pool_waiting: u64,
}

impl From<Summary> for Figures {
    fn from(s: Summary) -> Self {
        Figures {
            accepted: s.accepted,
            served: s.served,
            failed: s.failed,
            timed_out: s.timed_out,
            rejected: s.rejected,
            closed_at_shutdown: s.closed_at_shutdown,
            clients_now: s.clients_now,
            max_clients: s.max_clients,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            accept_errors: s.accept_errors,
            pool_threads: s.pool_threads,
            pool_busy: s.pool_busy,
            pool_waiting: s.pool_waiting,
        }
    }
}

/// A server's clock, now.
fn now_us(counters: &Counters) -> u64 {
    counters.timeline().micros(Instant::now())
}

/// `GET /`.
pub(super) fn page(_: &Ask) -> Response<Body> {
    let mut response = Response::new(full(PAGE));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// One client's row, folded from its events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
struct Row {
    client: u64,
    accepted_us: Option<u64>,
    admitted_us: Option<u64>,
    first_byte_us: Option<u64>,
    ended_us: Option<u64>,
    /// How it ended; `None` while it is connected.
    end: Option<What>,
}

impl Row {
    fn apply(&mut self, e: &Event) {
        let at = Some(e.at_us);
        match e.what {
            What::Accepted => self.accepted_us = at,
            What::Admitted => self.admitted_us = at,
            What::FirstByte => self.first_byte_us = at,
            end => {
                self.ended_us = at;
                self.end = Some(end);
            }
        }
    }
}

/// Every client whose events the ring holds, one row each in the order
/// they were accepted, and how many events it no longer holds. Read in
/// slices of `slice` events, so the ring's lock is never held for more.
fn fold(counters: &Counters, slice: usize) -> (Vec<Row>, u64) {
    let timeline = counters.timeline();
    let mut rows: BTreeMap<u64, Row> = BTreeMap::new();
    let mut events = Vec::with_capacity(slice);
    let (mut from, mut dropped) = (0, 0);
    loop {
        events.clear();
        let (next, missed) = timeline.read(from, slice.max(1), &mut events);
        if let Err(Missed(n)) = missed {
            dropped += n;
        }
        for e in &events {
            rows.entry(e.client)
                .or_insert_with(|| Row {
                    client: e.client,
                    ..Row::default()
                })
                .apply(e);
        }
        if next == from || events.is_empty() {
            break;
        }
        from = next;
    }
    (rows.into_values().collect(), dropped)
}

/// `GET /clients`.
pub(super) fn clients(ask: &Ask) -> Response<Body> {
    #[derive(Serialize)]
    struct Server<'a> {
        #[serde(flatten)]
        named: Named<'a>,
        now_us: u64,
        counters: Figures,
        /// Events the ring no longer holds: the rows of those clients may
        /// lack their start.
        dropped: u64,
        clients: Vec<Row>,
    }
    #[derive(Serialize)]
    struct Clients<'a> {
        servers: Vec<Server<'a>>,
    }
    let state = ask.state;
    let servers = state
        .servers
        .iter()
        .map(|w| {
            let (clients, dropped) = fold(&w.counters, state.limits.events_per_frame);
            Server {
                named: w.into(),
                now_us: now_us(&w.counters),
                counters: w.counters.summary().into(),
                dropped,
                clients,
            }
        })
        .collect();
    let body = serde_json::to_vec(&Clients { servers }).expect("plain data serializes");
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `GET /events`: a stream, or a 503 when [`Limits::max_streams`] are
/// open.
pub(super) fn events(ask: &Ask) -> Response<Body> {
    let state = ask.state;
    let Some(permit) = StreamPermit::take(state) else {
        let mut response = text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "at most {} viewers at once, and that many are watching; try again later\n",
                state.limits.max_streams
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
        return response;
    };
    let mut tick = tokio::time::interval(state.limits.stream_every);
    // A viewer that could not take a frame for a while gets one frame of
    // what it missed, not a burst of them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cursors = state
        .servers
        .iter()
        .map(|w| {
            w.counters
                .timeline()
                .next_seq()
                .saturating_sub(crate::server::timeline::CAPACITY as u64)
        })
        .collect();
    ask.progress.touch();
    let stream = Events {
        state: Arc::clone(state),
        progress: Arc::clone(ask.progress),
        hello: false,
        cursors,
        tick,
        scratch: Vec::new(),
        _permit: permit,
    };
    let mut response = Response::new(stream.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One of the [`Limits::max_streams`] places, given back when the stream
/// ends.
struct StreamPermit(Arc<State>);

impl StreamPermit {
    fn take(state: &Arc<State>) -> Option<StreamPermit> {
        let max = state.limits.max_streams;
        state
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamPermit(Arc::clone(state)))
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The body of `/events`.
struct Events {
    state: Arc<State>,
    progress: Arc<Progress>,
    hello: bool,
    /// For each server, the sequence number of the next event to send.
    cursors: Vec<u64>,
    tick: tokio::time::Interval,
    scratch: Vec<Event>,
    _permit: StreamPermit,
}

/// An event as the stream says it: which server's.
#[derive(Serialize)]
struct Line<'a> {
    server: usize,
    #[serde(flatten)]
    event: &'a Event,
}

impl Events {
    fn hello(&self) -> String {
        #[derive(Serialize)]
        struct Hello<'a> {
            servers: Vec<Named<'a>>,
            every_ms: u128,
        }
        let hello = Hello {
            servers: self.state.servers.iter().map(Named::from).collect(),
            every_ms: self.state.limits.stream_every.as_millis(),
        };
        let json = serde_json::to_string(&hello).expect("plain data serializes");
        // `retry`: how soon a browser reconnects after the stream ends.
        format!("retry: 2000\nevent: hello\ndata: {json}\n\n")
    }

    /// What happened since the last frame, then the clocks and counters.
    fn news(&mut self) -> String {
        let mut out = String::new();
        let mut missed = Vec::new();
        let mut lines = 0;
        for (server, watched) in self.state.servers.iter().enumerate() {
            self.scratch.clear();
            let (next, gap) = watched.counters.timeline().read(
                self.cursors[server],
                self.state.limits.events_per_frame,
                &mut self.scratch,
            );
            self.cursors[server] = next;
            if let Err(Missed(n)) = gap {
                missed.push((server, n));
            }
            for event in &self.scratch {
                if lines == 0 {
                    out.push_str("event: events\n");
                }
                lines += 1;
                out.push_str("data: ");
                let line = Line { server, event };
                out.push_str(&serde_json::to_string(&line).expect("plain data serializes"));
                out.push('\n');
            }
        }
        if lines > 0 {
            out.push('\n');
        }
        for (server, n) in missed {
            let _ = write!(
                out,
                "event: missed\ndata: {{\"server\":{server},\"missed\":{n}}}\n\n"
            );
        }
        #[derive(Serialize)]
        struct Status {
            now_us: u64,
            counters: Figures,
        }
        let status: Vec<Status> = self
            .state
            .servers
            .iter()
            .map(|w| Status {
                now_us: now_us(&w.counters),
                counters: w.counters.summary().into(),
            })
            .collect();
        out.push_str("event: status\ndata: ");
        out.push_str(&serde_json::to_string(&status).expect("plain data serializes"));
        out.push_str("\n\n");
        out
    }
}

impl hyper::body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Asked for a frame: the connection has room for one.
        self.progress.touch();
        if !self.hello {
            self.hello = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(self.hello())))));
        }
        ready!(self.tick.poll_tick(cx));
        let news = self.news();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(news)))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }
}

/// Checks `limits` for what the live page needs of them.
pub(super) fn check(limits: &Limits) -> Result<(), String> {
    if limits.max_streams >= limits.max_connections {
        return Err(format!(
            "max_streams ({}) must be below max_connections ({}): streams cannot be evicted, \
             and a scraper must always find room",
            limits.max_streams, limits.max_connections
        ));
    }
    if limits.stream_every.is_zero() || limits.events_per_frame == 0 {
        return Err("stream_every and events_per_frame must be more than zero".into());
    }
    Ok(())
}
