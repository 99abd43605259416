//! A TCP proxy that makes a local `contextfs serve` behave like one across a
//! network: every chunk of a request and of an answer is held for a random
//! delay, so a round trip gains `min..=max` and answers to concurrent
//! requests (on the connections of a client's pool) arrive out of order.
//! Bytes within one connection keep their order, as TCP's would.
//!
//! `CONTEXTFS_TEST_LATENCY_MS=MIN-MAX` puts one in front of every test
//! server's mounts (see `TestServer::mount_url`), so the mount suites also
//! run against a slow, reordering server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The variable that turns the proxy on for the mount tests: `MIN-MAX` ms.
pub const LATENCY_ENV: &str = "CONTEXTFS_TEST_LATENCY_MS";

/// The round-trip latency `CONTEXTFS_TEST_LATENCY_MS` asks for, if any.
pub fn latency_from_env() -> Option<(Duration, Duration)> {
    let raw = std::env::var(LATENCY_ENV).ok().filter(|v| !v.trim().is_empty())?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{LATENCY_ENV}={raw:?}: expected MIN-MAX in milliseconds"))
    };
    let (min, max) = match raw.split_once('-') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(&raw), parse(&raw)),
    };
    assert!(min <= max, "{LATENCY_ENV}={raw:?}: MIN is above MAX");
    Some((Duration::from_millis(min), Duration::from_millis(max)))
}

pub struct LatencyProxy {
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    /// Dropping it stops the proxy's runtime (and every connection).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl LatencyProxy {
    /// Listens on a free loopback port and forwards to `upstream`, adding
    /// `min..=max` to every round trip (half of it each way).
    pub fn start(upstream: SocketAddr, min: Duration, max: Duration) -> LatencyProxy {
        let upstream = Arc::new(Mutex::new(upstream));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let target = upstream.clone();
        // A runtime of its own: the tests block their runtime's threads on
        // shell commands, which must not stall the server's answers.
        std::thread::Builder::new()
            .name("latency-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
                    addr_tx
                        .send(listener.local_addr().expect("proxy address"))
                        .expect("report address");
                    let accept = async {
                        loop {
                            let Ok((client, _)) = listener.accept().await else {
                                continue;
                            };
                            let to = *target.lock().unwrap_or_else(|p| p.into_inner());
                            tokio::spawn(forward(client, to, min / 2, max / 2));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_background();
            })
            .expect("spawn the proxy thread");
        let addr = addr_rx.recv().expect("the proxy did not start");
        LatencyProxy {
            addr,
            upstream,
            _stop: stop_tx,
        }
    }

    /// New connections go to `upstream` (the server restarted elsewhere).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = upstream;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, min: Duration, max: Duration) {
    // Server down: the client sees its connection closed, as across a network.
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        delayed_copy(client_read, server_write, min, max),
        delayed_copy(server_read, client_write, min, max)
    );
}

/// Copies `from` to `to`, each chunk written once its own random delay has
/// passed and never before the chunk ahead of it.
async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    min: Duration,
    max: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let delay = rand::thread_rng().gen_range(min..=max);
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
