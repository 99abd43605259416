//! Cross-instance wake-ups: one connection LISTENs on [`CHANGES_CHANNEL`]
//! for the project ids that committed changes.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};

use super::retry::describe;
use super::CHANGES_CHANNEL;
use crate::server::store::Wake;

/// How often the listener connection proves it is still alive.
const LISTEN_PING: Duration = Duration::from_secs(10);

/// Keeps one connection LISTENing on [`CHANGES_CHANNEL`] and forwards the
/// project ids to `wakes`, reconnecting (and sending [`Wake::All`], since
/// anything may have been missed) until the receiver goes away.
pub(super) async fn listen(config: tokio_postgres::Config, wakes: tokio::sync::mpsc::UnboundedSender<Wake>) {
    let mut failures: u32 = 0;
    while !wakes.is_closed() {
        let started = std::time::Instant::now();
        match listen_once(&config, &wakes).await {
            Ok(()) => return,
            Err(e) => {
                // a connection that lived a while starts the count afresh
                if started.elapsed() > Duration::from_secs(60) {
                    failures = 0;
                }
                failures += 1;
                if failures <= 3 || failures % 60 == 0 {
                    tracing::warn!(error = %e, "change-feed listener lost its database connection; reconnecting");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
    }
}

/// One listener connection's life; `Ok` when the receiver went away.
async fn listen_once(
    config: &tokio_postgres::Config,
    wakes: &tokio::sync::mpsc::UnboundedSender<Wake>,
) -> Result<(), String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| describe(&e))?;
    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<Result<String, String>>();
    // Driving the connection by polling its messages also runs the client's queries.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if notes_tx.send(Ok(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = notes_tx.send(Err(describe(&e)));
                    return;
                }
            }
        }
        let _ = notes_tx.send(Err("connection closed".into()));
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
            .await
            .map_err(|e| describe(&e))?;
        // Whatever committed while no one was listening is only found by re-reading.
        if wakes.send(Wake::All).is_err() {
            return Ok(());
        }
        let mut ping = tokio::time::interval(LISTEN_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(Ok(payload)) => {
                        let wake = payload.parse().map(Wake::Project).unwrap_or(Wake::All);
                        if wakes.send(wake).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err("connection closed".into()),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(Duration::from_secs(10), client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(describe(&e)),
                        Err(_) => return Err("the database did not answer a ping within 10 s".into()),
                    }
                }
                _ = wakes.closed() => return Ok(()),
            }
        }
    }
    .await;
    drop(client);
    driver.abort();
    result
}
