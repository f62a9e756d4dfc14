//! The inventory's clock: marks silent hosts unreachable, releases claims never confirmed, and
//! writes heartbeats to the store in batches — once more at shutdown, so that the next start
//! knows when each host was last heard from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::App;
use crate::inventory::Transition;

/// How often heartbeats reach the store; a crash loses at most this much of them (hosts then
/// look a little more silent than they were, and send the next one anyway).
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// How often pending claims are checked for expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

pub async fn run(app: Arc<App>) {
    // Checking at half the interval notices a silent host within half an interval of its
    // allowance running out.
    let tick = (app.config.heartbeat_interval / 2).clamp(Duration::from_millis(25), FLUSH_EVERY);
    let mut flushed = Instant::now();
    let mut expired = Instant::now();
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
        for t in app.inventory.sweep() {
            publish(&app, &t).await;
        }
        if flushed.elapsed() >= FLUSH_EVERY {
            flush(&app).await;
            flushed = Instant::now();
        }
        if expired.elapsed() >= EXPIRE_EVERY {
            expire(&app).await;
            expired = Instant::now();
        }
    }
    flush(&app).await;
}

/// Announces a host's change of state on the event stream.
pub async fn publish(app: &App, t: &Transition) {
    tracing::info!(host = %t.name, from = t.from.as_str(), to = t.to.as_str(), "host state changed");
    app.events
        .notify(
            "host",
            &t.host,
            "state_changed",
            serde_json::json!({ "name": t.name, "from": t.from, "to": t.to }),
        )
        .await;
}

async fn flush(app: &App) {
    let beats = app.inventory.take_dirty();
    if let Err(e) = app.store.flush_heartbeats(&beats).await {
        tracing::warn!(hosts = beats.len(), error = %e, "heartbeats not written to the store; the next flush tries again");
    }
}

async fn expire(app: &App) {
    match app.placement.expire().await {
        Ok(claims) => {
            app.metrics.claims_expired(claims.len());
            for claim in claims {
                tracing::info!(claim = %claim.id, host = %claim.host, "claim expired unconfirmed; released");
                app.events
                    .notify("claim", &claim.id, "expired", serde_json::json!(claim))
                    .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "expiring claims failed; trying again shortly"),
    }
}
