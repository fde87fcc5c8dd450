//! The client certificate's expiry: recorded for telemetry, warned about
//! ahead of time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{PublisherSettings, PublisherStats, tls};

/// How long before its client certificate expires the gateway warns.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// Records when the client certificate expires, and warns once it has
/// less than `EXPIRY_WARNING` left (renew it: files are re-read at each
/// connect).
pub(super) fn check_certificate(settings: &PublisherSettings, stats: &PublisherStats) {
    let Some(path) = &settings.tls.client_cert else {
        return;
    };
    let Some(not_after) = tls::not_after(path) else {
        return;
    };
    stats
        .client_cert_not_after
        .store(u64::try_from(not_after).unwrap_or(0), Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let left = not_after - now;
    if left < EXPIRY_WARNING.as_secs() as i64 {
        tracing::warn!(
            certificate = %path.display(),
            days_left = left / 86_400,
            "this gateway's client certificate expires soon; install a renewed one (it is read at every connect)"
        );
    }
}
