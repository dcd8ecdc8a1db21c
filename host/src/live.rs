//! The live event feed of one replica: what the dashboard and other
//! `/api/v1/events/stream` clients see.
//!
//! Only one replica relays the outbox at a time (a lease), so the relay's
//! own process cannot be the source for every replica's clients. Instead,
//! when the relay marks events sent, it sends their `seq` numbers with
//! PostgreSQL `NOTIFY` in the same statement; every replica `LISTEN`s, reads
//! those rows and broadcasts them to its local subscribers. Clients thus see
//! exactly the published events, in publication order, whichever replica
//! they are connected to.
//!
//! A notification can be missed (the listening connection dropped, or a slow
//! client fell behind the broadcast buffer); subscribers then get
//! [`Live::Resync`] and reload what they show.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::outbox::{self, CHANNEL, Envelope};

/// What a local subscriber receives.
#[derive(Debug, Clone)]
pub enum Live {
    Event(Arc<Envelope>),
    /// Events may have been missed: reload from the REST API.
    Resync,
}

pub type Sender = broadcast::Sender<Live>;

/// A broadcast channel sized for bursts of a large rollout.
pub fn channel() -> Sender {
    broadcast::channel(8192).0
}

/// Parses a notification payload: comma-separated `seq` numbers.
fn parse_seqs(payload: &str) -> Vec<i64> {
    payload
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Listens for the relay's notifications until `shutdown` and broadcasts
/// the announced events to local subscribers.
pub async fn run(pool: PgPool, sender: Sender, shutdown: CancellationToken) {
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            () = shutdown.cancelled() => return,
            listener = listener => match listener {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "live feed: cannot listen for events; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            },
        };
        // Whatever was announced before this (re)connection is unknown.
        let _ = sender.send(Live::Resync);
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => {
                    let seqs = parse_seqs(notification.payload());
                    if let Err(error) = forward(&pool, &sender, &seqs).await {
                        tracing::warn!(%error, "live feed: reading announced events");
                        let _ = sender.send(Live::Resync);
                    }
                }
                // The connection was lost; try_recv reconnects on the next call.
                Ok(None) => {
                    tracing::debug!("live feed: listening connection lost; reconnecting");
                    let _ = sender.send(Live::Resync);
                }
                Err(error) => {
                    tracing::warn!(%error, "live feed: listening failed; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn forward(pool: &PgPool, sender: &Sender, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() || sender.receiver_count() == 0 {
        return Ok(());
    }
    for event in outbox::sent_by_seq(pool, seqs).await? {
        let _ = sender.send(Live::Event(Arc::new(event)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_seqs;

    #[test]
    fn payloads_are_lists_of_seqs() {
        assert_eq!(parse_seqs("1,2,30"), vec![1, 2, 30]);
        assert_eq!(parse_seqs(""), Vec::<i64>::new());
        assert_eq!(parse_seqs("7,x,8"), vec![7, 8]);
    }
}
