//! Server-Sent Events at `GET /events`: the bus's events as `event: <type>` / `data: <the
//! event JSON>` records, for clients that want no WebSocket (`curl -N`, `EventSource`).
//! `?callId=a&callId=b` limits the stream to those calls. A comment line goes out every 15 s
//! so proxies keep the connection; a client that falls behind gets an `EventsLost` record
//! with the count, and the stream goes on.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use tokio::sync::broadcast::{self, error::RecvError};

use super::AppState;
use crate::events::Event;

const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/events")
            .wrap(actix_web::middleware::from_fn(super::require_api_key))
            .wrap(actix_web::middleware::from_fn(super::cors))
            .route(web::get().to(events)),
    );
}

/// The `callId` values of a query string (repeatable), percent-decoded.
pub fn call_ids(query: &str) -> Vec<String> {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "callId" || k == "callid")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// One SSE record for an event.
pub fn record(event: &Event) -> String {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".into());
    format!("event: {}\ndata: {data}\n\n", event.kind())
}

async fn events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let only = call_ids(req.query_string());
    let rx = state.bus.subscribe();
    tracing::info!(calls = ?only, "SSE subscriber connected");
    let hello = web::Bytes::from("retry: 2000\n: sipstream events\n\n");
    let body = futures_util::stream::once(async move { Ok::<_, actix_web::Error>(hello) })
        .chain(futures_util::stream::unfold((rx, only), next_record));
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

async fn next_record(
    (mut rx, only): (broadcast::Receiver<Event>, Vec<String>),
) -> Option<(
    Result<web::Bytes, actix_web::Error>,
    (broadcast::Receiver<Event>, Vec<String>),
)> {
    loop {
        let text = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Err(_) => ": keepalive\n\n".to_string(),
            Ok(Ok(ev)) => {
                let wanted =
                    only.is_empty() || ev.call_id().is_some_and(|id| only.iter().any(|o| o == id));
                if !wanted {
                    continue;
                }
                record(&ev)
            }
            Ok(Err(RecvError::Lagged(n))) => {
                format!("event: EventsLost\ndata: {{\"type\":\"EventsLost\",\"lost\":{n}}}\n\n")
            }
            Ok(Err(RecvError::Closed)) => return None,
        };
        return Some((Ok(web::Bytes::from(text)), (rx, only)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_come_from_the_query_decoded_and_repeatable() {
        assert_eq!(
            call_ids("callId=a&x=1&callId=b%40c&callid=d+e"),
            ["a", "b@c", "d e"]
        );
        assert!(call_ids("").is_empty());
        assert!(call_ids("callId=").is_empty());
        assert_eq!(call_ids("callId=%zz"), ["%zz"]);
    }

    #[test]
    fn records_name_the_event_and_carry_its_json() {
        let ev = Event::DtmfEvent {
            call_id: "c1".into(),
            leg: "callee".into(),
            digit: "5".into(),
            duration: Some(100),
            method: "INFO".into(),
            timestamp: 1,
        };
        let r = record(&ev);
        assert!(r.starts_with("event: DtmfEvent\ndata: {"), "{r}");
        assert!(r.ends_with("}\n\n"));
        let json: serde_json::Value =
            serde_json::from_str(r.lines().nth(1).unwrap().strip_prefix("data: ").unwrap())
                .unwrap();
        assert_eq!(json["digit"], "5");
    }
}
