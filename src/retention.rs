//! The retention periods of the privacy policy, applied by a periodic job:
//! support logs and sent-email records go after their configured time.
//! Booking records and their status history are never pruned here (7 years).

use std::time::Duration;

use crate::config::RetentionSettings;
use crate::db::Db;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Runs once now and then every `interval_secs`, on the current runtime.
pub fn start(db: Db, settings: RetentionSettings) {
    actix::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(settings.interval_secs.max(1)));
        loop {
            tick.tick().await;
            apply(&db, &settings).await;
        }
    });
}

pub async fn apply(db: &Db, settings: &RetentionSettings) {
    let now = crate::time::now_ms();
    match db
        .prune_support_logs(now - i64::from(settings.support_log_days) * DAY_MS)
        .await
    {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "retention: support conversations deleted"),
        Err(error) => tracing::warn!(%error, "retention: support logs not pruned"),
    }
    match db
        .prune_email_history(now - i64::from(settings.sent_email_days) * DAY_MS)
        .await
    {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "retention: email records deleted"),
        Err(error) => tracing::warn!(%error, "retention: email records not pruned"),
    }
    // The backend retries within minutes; a day covers any outage it rides out.
    match db.prune_idempotency_keys(now - DAY_MS).await {
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "retention: idempotency keys not pruned"),
    }
}
