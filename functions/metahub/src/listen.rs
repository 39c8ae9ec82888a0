//! Every listener of `metahub` (the registry of `serve`, `--metrics-listen`, the `admin ui` proxy) is served here,
//! by hyper's HTTP/1 server with a timer, so that a slow or silent client cannot hold a connection for long:
//! - **header**: a request's header must arrive within `header_timeout` (hyper's `header_read_timeout`). hyper
//!   restarts that timer when a kept-alive connection waits for its next request, so it is also the idle timeout;
//! - **body**: a request body may pause at most `body_timeout` between two pieces (tower-http's
//!   `RequestBodyTimeout`), and a whole request, body and handler included, takes at most `request_timeout`
//!   (tower's `Timeout`; answered `503 UNAVAILABLE` in the registry's error JSON);
//! - **connections**: at most `max_connections` are served at once. Past that, a connection that sends its request
//!   within a second is answered `503 UNAVAILABLE` with `Retry-After` and closed (a few dozen at a time; beyond
//!   those, closed at once), so a flood makes clients retry instead of hang, and, with `max_connections` below the
//!   file limit, the process never runs out of file descriptors.
//!
//! axum's own `serve` sets none of these (no timer, so hyper's default header timeout never applies).

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use clap::Args;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metahub_core::Error;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{BoxError, ServiceBuilder};
use tower_http::timeout::RequestBodyTimeoutLayer;

/// Connections past `max_connections` that are still read and answered 503 at once; any more are closed unanswered.
const OVERFLOW_ANSWERED: usize = 32;
/// How long a connection past the cap may take to send its request header before it is closed unanswered: short, so
/// that silent connections cannot hold the few answering slots either.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Seconds a client refused for want of a connection slot is asked to wait.
const RETRY_AFTER_SECONDS: u64 = 1;

/// How long a client may take, and how many may be served at once.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A request's header must arrive within this; also how long a kept-alive connection may sit idle.
    #[arg(long, env = "METAHUB_HEADER_TIMEOUT", default_value = "10s", value_parser = metahub_core::settings::parse_duration)]
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    #[arg(long, env = "METAHUB_BODY_TIMEOUT", default_value = "10s", value_parser = metahub_core::settings::parse_duration)]
    pub body_timeout: Duration,
    /// Longest a whole request may take, from its header to its answer's header (upstream requests included).
    #[arg(long, env = "METAHUB_REQUEST_TIMEOUT", default_value = "90s", value_parser = metahub_core::settings::parse_duration)]
    pub request_timeout: Duration,
    /// Connections served at once; past it, answered 503 with Retry-After and closed. Keep it below the process's
    /// file limit (`ulimit -n`).
    #[arg(long, env = "METAHUB_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(90),
            max_connections: 512,
        }
    }
}

impl Limits {
    /// Refuses a zero timeout (it would refuse every request).
    pub fn validated(self) -> anyhow::Result<Self> {
        for (flag, value) in [
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--request-timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                anyhow::bail!("{flag} must be longer than 0s");
            }
        }
        Ok(self)
    }
}

/// File descriptors kept free for everything but client connections: the store, upstream connections, logs.
const RESERVED_FDS: u64 = 64;

/// The process's soft limit on open files, where the system tells it (Linux's `/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// `wanted` connections, or fewer when the open-file limit could not hold them (with a warning saying so): past the
/// limit, accepting fails and every client waits, where past the cap they are answered at once.
fn connection_cap(wanted: u32, what: &str) -> usize {
    let wanted = wanted as usize;
    let Some(limit) = open_file_limit() else { return wanted };
    let room = limit.saturating_sub(RESERVED_FDS + OVERFLOW_ANSWERED as u64).max(1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            listener = what,
            max_connections = wanted,
            open_file_limit = limit,
            serving = room,
            "--max-connections is above what the open file limit (ulimit -n) can hold; serving fewer"
        );
        return room;
    }
    wanted
}

/// A registry error JSON answer, outside any router.
fn error_answer(error: &Error, retry_after: Option<u64>) -> Response<Body> {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut answer = Response::new(Body::from(error.to_json().to_string()));
    *answer.status_mut() = status;
    answer.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(seconds) = retry_after {
        answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    answer
}

/// The answer to a connection past the cap.
fn busy() -> Response<Body> {
    let error = Error::unavailable("the server is serving as many connections as it may; retry shortly");
    let mut answer = error_answer(&error, Some(RETRY_AFTER_SECONDS));
    answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    answer
}

/// [`busy`] as bytes on the wire, for a connection there is no slot to read from.
fn busy_bytes() -> Vec<u8> {
    let error = Error::unavailable("the server is serving as many connections as it may; retry shortly");
    let body = error.to_json().to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECONDS}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets the open requests finish
/// (for at most `request_timeout`). `what` names the listener in logs.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let request_timeout = limits.request_timeout;
    let router = router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| async move {
                let message = if e.is::<tower::timeout::error::Elapsed>() {
                    format!("the request was not completed within {}", humantime::format_duration(request_timeout))
                } else {
                    format!("the request failed: {e}")
                };
                error_answer(&Error::unavailable(message), None)
            }))
            .layer(tower::timeout::TimeoutLayer::new(request_timeout)),
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut refusing = http1::Builder::new();
    let overflow_timeout = limits.header_timeout.min(OVERFLOW_HEADER_TIMEOUT);
    refusing.timer(TokioTimer::new()).header_read_timeout(overflow_timeout).keep_alive(false);

    let served = Arc::new(Semaphore::new(connection_cap(limits.max_connections, what)));
    let answered_busy = Arc::new(Semaphore::new(OVERFLOW_ANSWERED));
    let busy_unread = busy_bytes();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to be freed instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if let Ok(permit) = served.clone().try_acquire_owned() {
            let service = ServiceBuilder::new()
                .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
                .map_request(move |mut request: Request<_>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                })
                .service(router.clone());
            let connection = graceful.watch(http.serve_connection(io, TowerToHyperService::new(service)));
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(listener = what, %peer, error = %e, "connection closed");
                }
                drop(permit);
            });
        } else if let Ok(permit) = answered_busy.clone().try_acquire_owned() {
            tracing::debug!(listener = what, %peer, "connection refused: too many connections");
            let service = tower::service_fn(|_: Request<hyper::body::Incoming>| async { Ok::<_, Infallible>(busy()) });
            let connection = refusing.serve_connection(io, TowerToHyperService::new(service));
            tokio::spawn(async move {
                // The header read timeout bounds the read; this bounds a client that never reads the answer.
                let _ = tokio::time::timeout(overflow_timeout * 2, connection).await;
                drop(permit);
            });
        } else {
            // No slot even to read the request: the answer goes out unread, in one non-blocking write, and the
            // connection is closed at once, so that a flood costs nothing beyond the accept.
            let _ = io.inner().try_write(&busy_unread);
            drop(io);
        }
    }
    drop(listener);
    if tokio::time::timeout(request_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = what, "requests still open at shutdown were cut off");
    }
    Ok(())
}

/// Binds `address`, naming `flag` in the error.
pub async fn bind(address: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("{flag} {address}: cannot listen"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        if let Some(limit) = open_file_limit() {
            assert!(limit > 0);
            assert!(connection_cap(u32::MAX, "test") as u64 <= limit);
        }
        assert_eq!(connection_cap(1, "test"), 1);
    }

    #[test]
    fn the_unread_answer_is_a_whole_http_answer() {
        let bytes = String::from_utf8(busy_bytes()).unwrap();
        let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 ") && head.contains("\r\nretry-after: 1\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(serde_json::from_str::<serde_json::Value>(body).unwrap()["errors"][0]["code"], "UNAVAILABLE");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        assert!(Limits::default().validated().is_ok());
        let zero = Limits { header_timeout: Duration::ZERO, ..Limits::default() };
        assert!(zero.validated().unwrap_err().to_string().contains("--header-timeout"));
    }
}
