//! The loop shared by background workers.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Runs `round` on every tick of `period` and on every wake-up until
/// `shutdown`. A round that handled a full batch (`full` items) runs again
/// at once; an error is logged and waits for the next tick.
pub async fn run_rounds<F, Fut>(
    what: &'static str,
    period: Duration,
    full: usize,
    wakeup: &Notify,
    shutdown: &CancellationToken,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            () = wakeup.notified() => {},
            () = shutdown.cancelled() => break,
        }
        loop {
            match round().await {
                Ok(n) if n >= full => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "{what}");
                    break;
                }
            }
        }
    }
}
