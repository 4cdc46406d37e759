//! Posts every bus event to the configured webhook URL as JSON. Runs as its own task: a slow
//! or dead webhook delays only this task, never a call. Events go out one at a time in the
//! bus's order (so per call in order), each retried with backoff before the next; when the
//! task falls behind the bus, the lost events are counted and logged.
//!
//! With `webhook_secret`, each POST carries `X-Sipstream-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of the exact body bytes. `X-Sipstream-Delivery` numbers the events of this
//! process from 1, so a receiver sees both order and gaps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::broadcast::error::RecvError;

use super::{Event, EventBus};
use crate::secret::Secret;

pub struct WebhookConfig {
    pub url: String,
    pub retries: u32,
    pub timeout: Duration,
    pub secret: Secret,
}

/// `sha256=<hex HMAC-SHA256 of body>`, the value of `X-Sipstream-Signature`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Spawns the poster; it ends when the bus is dropped.
/// What the poster did, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events accepted by the receiver (2xx).
    pub delivered: AtomicU64,
    /// POSTs that failed or were refused (each attempt, retries included).
    pub failed_attempts: AtomicU64,
    /// Events given up after the retries, or lost because the poster fell behind.
    pub dropped: AtomicU64,
    /// Nothing queued and nothing being posted (what a graceful shutdown waits for).
    pub idle: std::sync::atomic::AtomicBool,
}

impl WebhookStats {
    /// Waits until every event published so far is posted (or given up), or `limit`;
    /// returns whether the poster is idle.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        // Events published just before the call reach the poster's queue first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while !self.idle.load(Ordering::Acquire) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

pub fn spawn(
    bus: &EventBus,
    cfg: WebhookConfig,
    stats: Arc<WebhookStats>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(cfg.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client cannot be built; webhooks disabled");
                return;
            }
        };
        let mut delivery: u64 = 0;
        loop {
            stats.idle.store(rx.is_empty(), Ordering::Release);
            match rx.recv().await {
                Ok(event) => {
                    stats.idle.store(false, Ordering::Release);
                    delivery += 1;
                    post(&client, &cfg, &event, delivery, &stats).await
                }
                Err(RecvError::Lagged(n)) => {
                    delivery += n;
                    stats.dropped.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(lost = n, "webhook poster fell behind; events not posted")
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

async fn post(
    client: &reqwest::Client,
    cfg: &WebhookConfig,
    event: &Event,
    delivery: u64,
    stats: &WebhookStats,
) {
    let body = match serde_json::to_vec(event) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "event cannot be serialised; not posted");
            return;
        }
    };
    let signature = (!cfg.secret.is_empty()).then(|| signature(&cfg.secret, &body));
    let mut delay = Duration::from_millis(200);
    for attempt in 0..=cfg.retries {
        let mut req = client
            .post(&cfg.url)
            .header("content-type", "application/json")
            .header("x-sipstream-event", event.kind())
            .header("x-sipstream-delivery", delivery.to_string())
            .body(body.clone());
        if let Some(sig) = &signature {
            req = req.header("x-sipstream-signature", sig);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(resp) => {
                tracing::warn!(url = %cfg.url, status = %resp.status(), attempt, "webhook refused event")
            }
            Err(e) => tracing::warn!(url = %cfg.url, error = %e, attempt, "webhook POST failed"),
        }
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if attempt < cfg.retries {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    stats.dropped.fetch_add(1, Ordering::Relaxed);
    tracing::error!(url = %cfg.url, delivery, "webhook event dropped after retries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = signature(&Secret::new("Jefe"), b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
