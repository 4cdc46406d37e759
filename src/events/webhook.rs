//! Posts every bus event to the configured webhook URL as JSON. Runs as its own task: a slow
//! or dead webhook delays only this task, never a call. Each event is retried with backoff;
//! when the task falls behind the bus, the lost events are counted and logged.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use super::{Event, EventBus};

pub struct WebhookConfig {
    pub url: String,
    pub retries: u32,
    pub timeout: Duration,
}

/// Spawns the poster; it ends when the bus is dropped.
pub fn spawn(bus: &EventBus, cfg: WebhookConfig) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(cfg.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client cannot be built; webhooks disabled");
                return;
            }
        };
        loop {
            match rx.recv().await {
                Ok(event) => post(&client, &cfg, &event).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(lost = n, "webhook poster fell behind; events not posted")
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

async fn post(client: &reqwest::Client, cfg: &WebhookConfig, event: &Event) {
    let mut delay = Duration::from_millis(200);
    for attempt in 0..=cfg.retries {
        match client.post(&cfg.url).json(event).send().await {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => {
                tracing::warn!(url = %cfg.url, status = %resp.status(), attempt, "webhook refused event")
            }
            Err(e) => tracing::warn!(url = %cfg.url, error = %e, attempt, "webhook POST failed"),
        }
        if attempt < cfg.retries {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
    tracing::error!(url = %cfg.url, "webhook event dropped after retries");
}
