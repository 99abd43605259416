//! The HTTP/1.1 accept loop: connection cap, header/idle timeout, request-body
//! idle timeout and graceful shutdown.
//!
//! `axum::serve` exposes none of hyper's timeouts, so connections are served
//! here with `hyper::server::conn::http1` directly:
//! - a client must send a request's complete header within
//!   [`ConnLimits::header_timeout`]. hyper starts that timer as soon as a
//!   connection waits for its next request, so it is also the keep-alive idle
//!   timeout: an idle connection is closed after the same time;
//! - a request body that delivers no bytes for [`ConnLimits::body_timeout`]
//!   fails (the handler sees a read error; the connection is closed);
//! - responses may take as long as they need (the change-feed long-poll);
//! - at most [`ConnLimits::max_connections`] connections are served at once;
//!   beyond that new connections wait in the listen backlog, and the server
//!   logs one warning per minute while it is at the cap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Longest wait for a complete request header, and for the next request
    /// on an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Longest gap between two pieces of a request body.
    pub body_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then waits up to
/// `limits.shutdown_grace` for the connections in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    raise_fd_limit(limits.max_connections);
    let body_timeout = limits.body_timeout;
    let app = app.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        body_idle_timeout(req, next, body_timeout)
    }));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut last_full_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_full_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
                    last_full_warning = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: new connections wait until one closes (--max-connections)"
                    );
                }
                tokio::select! {
                    permit = slots.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Responses go out in several writes (headers, then a streamed body);
        // without TCP_NODELAY the body waits for a delayed ACK (~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Handlers that care who asks (`/metrics`: loopback only) read the peer.
        let with_peer = {
            let service = service.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                hyper::service::Service::call(&service, req)
            })
        };
        let conn = http.serve_connection(TokioIo::new(tcp), with_peer);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Timeouts and resets end up here; they are the client's business.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still running after {:?}; stopping anyway",
            limits.shutdown_grace
        );
    }
    Ok(())
}

/// Makes sure the process may hold a descriptor per connection (plus room
/// for files), raising the soft limit up to the hard one if needed.
fn raise_fd_limit(max_connections: usize) {
    let want = max_connections as u64 + 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        let target = want.min(lim.rlim_max);
        lim.rlim_cur = target;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 || target < want {
            tracing::warn!(
                max_connections,
                open_files = target,
                "the open-file limit is below --max-connections; connections beyond it will be refused"
            );
        }
    }
}

async fn body_idle_timeout(req: Request, next: Next, timeout: Duration) -> Response {
    let (parts, body) = req.into_parts();
    let body = Body::new(IdleTimeoutBody {
        inner: body,
        timeout,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        started: false,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// A request body that fails when no bytes arrive for `timeout`.
struct IdleTimeoutBody {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The clock starts when the handler first reads, not when the request
    /// arrived (authentication may take a while before that).
    started: bool,
}

impl http_body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if !this.started {
            this.started = true;
            let deadline = tokio::time::Instant::now() + this.timeout;
            this.sleep.as_mut().reset(deadline);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no request body bytes for {:?}", this.timeout),
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
