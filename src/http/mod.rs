//! The operator's HTTP port: `serve --http HOST:PORT` (`--metrics` is its
//! older name). It answers `GET /metrics` ([`metrics`]) and the live page,
//! `GET /` with its stream `/events` and snapshot `/clients` ([`live`]);
//! every page it serves is one line of `ROUTES`. `demo --live` serves the
//! live page of several servers at once.
//!
//! HTTP is hyper's (HTTP/1.1, keep-alive, `HEAD`), on a tokio runtime of
//! its own with one thread, `http`: answering the operator never takes a
//! runtime thread from a model, and the models never wait on it. Every
//! answer is made from memory in microseconds, so one thread serves
//! every connection in turn without any waiting behind another's I/O.
//!
//! What the port's clients may hold is bounded in one place, [`Limits`]:
//!
//! - **a deadline for the whole request head**, counted from when the port
//!   starts waiting for it (the connection's start, or the end of the
//!   answer before on a kept-alive connection). A client that sends its
//!   head a byte at a time, or nothing at all, is closed at the deadline,
//!   however often it sends (hyper's header read timeout, which is such a
//!   deadline rather than a limit per read);
//! - **a cap on connections**: a newcomer over it closes the connection
//!   that has waited longest without a request being answered, so a crowd
//!   of silent or dripping connections holds the port only until the next
//!   scraper comes. Only when every connection is being answered is the
//!   newcomer closed instead;
//! - **a cap on the request head's size**: over it, a 431; a head that is
//!   not HTTP gets a 400 (both hyper's);
//! - **a cap on streams** (`/events`): a stream is an answer that never
//!   ends, so it can never be evicted; there are at most a few, fewer than
//!   the connections, and one whose connection takes nothing of it for a
//!   while is closed rather than buffered for.

mod connections;
pub mod live;
pub mod metrics;
mod page;

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use crate::server::listener;
use connections::{Busy, Connection, Connections};
use page::{Ask, Progress, State, full, text};
pub use page::{Body, Limits, Watched};

/// The backlog of the port's listener: room for a burst of connections
/// while its one thread is busy.
const BACKLOG: i32 = 1024;

/// What answers a GET of a page (a HEAD is answered as its GET, without
/// the body).
type Page = fn(&Ask) -> Response<Body>;

/// Every page of the port.
const ROUTES: &[(&str, Page)] = &[
    ("/metrics", metrics_page),
    ("/", live::page),
    ("/events", live::events),
    ("/clients", live::clients),
];

/// `HOST:PORT` for the port, as `--http` takes it: checked for its form
/// here, resolved and bound by [`bind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addr {
    host: String,
    port: u16,
}

/// What a good [`Addr`] looks like, for the error of a bad one.
const ADDR_FORM: &str = "give HOST:PORT, such as 127.0.0.1:9100, [::1]:9100 or localhost:9100 \
     (an IPv6 address in brackets; port 0 picks a free one)";

impl FromStr for Addr {
    type Err = String;

    fn from_str(s: &str) -> Result<Addr, String> {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!("no port in it; {ADDR_FORM}"));
        };
        let port = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port from 0 to 65535; {ADDR_FORM}"))?;
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(format!("{host} is not an IPv6 address; {ADDR_FORM}")),
            None if host.contains(':') => {
                return Err(format!(
                    "an IPv6 address goes in brackets ([{host}]:{port}); {ADDR_FORM}"
                ));
            }
            None if host.is_empty() => return Err(format!("no host in it; {ADDR_FORM}")),
            None => host,
        };
        Ok(Addr {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Listens on the first of `addr`'s addresses that can be bound. The
/// error names the flag it came from (`flag`) and says why.
pub fn bind(flag: &str, addr: &Addr) -> Result<TcpListener, String> {
    let addrs = (addr.host.as_str(), addr.port)
        .to_socket_addrs()
        .map_err(|e| format!("{flag} {addr}: cannot resolve {}: {e}", addr.host))?;
    let mut last = None;
    for at in addrs {
        match listener::bind(at, BACKLOG) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => format!("{flag} {addr}: cannot listen there: {e}"),
        None => format!("{flag} {addr}: {} has no address", addr.host),
    })
}

/// The port, running; [`stop`](Port::stop) it, or let it live as long as
/// the process.
pub struct Port {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Port {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many `/events` streams (live pages, mostly) are open now.
    pub fn viewers(&self) -> usize {
        self.state.streams.load(Ordering::Acquire)
    }

    /// Closes it, its connections too, and waits for its thread.
    pub fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves the port on `listener` with the default [`Limits`], its pages
/// made from `servers` (`/metrics` only when there is one), on a thread
/// and runtime of its own.
pub fn serve(listener: TcpListener, servers: Vec<Watched>) -> io::Result<Port> {
    serve_with(listener, servers, Limits::default())
}

/// [`serve`] within `limits`.
pub fn serve_with(
    listener: TcpListener,
    servers: Vec<Watched>,
    limits: Limits,
) -> io::Result<Port> {
    live::check(&limits).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel();
    let state = Arc::new(State {
        servers,
        limits,
        streams: AtomicUsize::new(0),
    });
    let port_state = Arc::clone(&state);
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("the HTTP port cannot run: {e}");
                        return;
                    }
                };
                let stop = async {
                    // A Port dropped rather than stopped lets the port
                    // live as long as the process.
                    if stopped.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    () = accept(listener, state) => {}
                    () = stop => {}
                }
            });
            // Dropping the runtime here ends every connection's task.
        })?;
    Ok(Port {
        addr,
        state: port_state,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Takes connections for ever, within the cap.
async fn accept(listener: tokio::net::TcpListener, state: Arc<State>) {
    let limits = state.limits;
    let connections = Connections::default();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_deadline)
        .max_header_size(limits.max_head)
        // Bounds what a head still arriving may take (hyper's least is
        // 8 KiB); a head that reaches it gets the 431.
        .max_buf_size(limits.max_head.max(8 * 1024) * 2)
        .keep_alive(true);
    let http = Arc::new(http);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if listener::one_connection_failed(&e) => continue,
            // Out of descriptors, say: wait rather than spin.
            Err(_) => {
                tokio::time::sleep(listener::BACKOFF).await;
                continue;
            }
        };
        let Some((connection, evicted)) = connections.admit(limits.max_connections) else {
            // Every connection is being answered: this one waits for
            // nothing, it is closed.
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(limits.send_buffer);
        tokio::spawn(serve_connection(
            stream,
            connection,
            evicted,
            Arc::clone(&state),
            Arc::clone(&http),
        ));
        // The newcomer reads its request before the next is accepted, so
        // a burst of connections cannot push a scraper out between its
        // connect and its request.
        tokio::task::yield_now().await;
    }
}

/// One connection, until it closes, fails its deadline, is evicted, or
/// its stream stalls.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    connection: Connection,
    evicted: oneshot::Receiver<()>,
    state: Arc<State>,
    http: Arc<http1::Builder>,
) {
    let progress = Arc::new(Progress::default());
    let service = service_fn(|request: Request<Incoming>| {
        let busy = connection.busy();
        let ask = Ask {
            request: &request,
            state: &state,
            progress: &progress,
        };
        std::future::ready(Ok::<_, Infallible>(answer(&ask, busy)))
    });
    let serving = http.serve_connection(TokioIo::new(stream), service);
    // A client's failure (a deadline, a reset) is its own: nothing to do.
    tokio::select! {
        _ = serving => {}
        _ = evicted => {}
        () = progress.stalled(state.limits.stream_stall) => {}
    }
}

/// The answer to `ask`, holding `busy` until its body is sent.
fn answer(ask: &Ask, busy: Busy) -> Response<Body> {
    let request = ask.request;
    let path = request.uri().path();
    let response = match ROUTES.iter().find(|(at, _)| *at == path) {
        Some((_, page)) if matches!(*request.method(), Method::GET | Method::HEAD) => {
            // hyper sends no body for a HEAD, and the Content-Length of the
            // body it is given: GET's, as RFC 9110 §9.3.2 asks.
            page(ask)
        }
        Some(_) => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        None => {
            let paths: Vec<&str> = ROUTES.iter().map(|(at, _)| *at).collect();
            let body = format!("not found; this port serves {}\n", paths.join(", "));
            text(StatusCode::NOT_FOUND, &body)
        }
    };
    // The connection counts as answering until hyper drops the body,
    // once it is sent.
    response.map(|body| Answering { body, _busy: busy }.boxed_unsync())
}

/// A body, and the connection's [`Busy`] until it is dropped. Its length
/// is the body's, so that hyper sends a `Content-Length` (GET's, for a
/// HEAD) rather than chunks.
struct Answering {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Answering {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

fn metrics_page(ask: &Ask) -> Response<Body> {
    let [server] = ask.state.servers.as_slice() else {
        let body = format!(
            "this port shows {} servers (concur demo --live), and /metrics is one server's: \
             serve --http has it\n",
            ask.state.servers.len()
        );
        return text(StatusCode::NOT_FOUND, &body);
    };
    let accept = ask
        .request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    let mut response = Response::new(full(metrics::render(server.counters(), format)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_for_their_form() {
        for (good, shown) in [
            ("127.0.0.1:9100", "127.0.0.1:9100"),
            ("[::1]:0", "[::1]:0"),
            ("localhost:65535", "localhost:65535"),
        ] {
            let addr: Addr = good.parse().unwrap();
            assert_eq!(addr.to_string(), shown);
        }
        for (bad, says) in [
            ("9100", "no port in it"),
            ("localhost:http", "\"http\" is not a port"),
            ("127.0.0.1:65536", "is not a port from 0 to 65535"),
            ("::1:9100", "an IPv6 address goes in brackets ([::1]:9100)"),
            ("[nope]:9100", "[nope] is not an IPv6 address"),
            (":9100", "no host in it"),
        ] {
            let err = bad.parse::<Addr>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
            assert!(err.contains("give HOST:PORT, such as"), "{bad}: {err}");
        }
    }
}
