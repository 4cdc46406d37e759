//! The event bus: call status changes (and, later, stream, recording and SIPREC events) go to
//! one broadcast bus; the webhook poster and WebSocket subscribers read from it. Publishing
//! never blocks: a subscriber that falls behind loses the oldest events and is told how many.
pub mod webhook;

use serde::Serialize;
use tokio::sync::broadcast;

/// One event, serialised as WCS REST hooks are: `{"type": "CallStatusEvent", ...fields}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    CallStatusEvent {
        call_id: String,
        status: String,
        sip_status: Option<u16>,
        reason: Option<String>,
        stream_name: String,
        callee: String,
        timestamp: u64,
    },
    /// Progress of a control request on a call, with call-api's names in `event`
    /// (`CallHolding`, `CallHoldStart`, `CallHoldSuccessful`, `CallHoldFailed`, and the
    /// `CallUnhold…` ones).
    #[serde(rename_all = "camelCase")]
    CallControlEvent {
        call_id: String,
        event: String,
        leg: Option<String>,
        sip_status: Option<u16>,
        reason: Option<String>,
        timestamp: u64,
    },
    /// A DTMF digit from the far end (`method`: INFO; RFC 4733 later).
    #[serde(rename_all = "camelCase")]
    DtmfEvent {
        call_id: String,
        leg: String,
        digit: String,
        /// Milliseconds, when the peer said.
        duration: Option<u32>,
        method: String,
        timestamp: u64,
    },
    #[serde(rename_all = "camelCase")]
    RegistrationStatusEvent {
        sip_login: String,
        sip_domain: String,
        status: String,
        sip_status: Option<u16>,
        timestamp: u64,
    },
    /// A SIPREC session started recording (OpenSIPS's event and parameter names).
    #[serde(rename = "E_SIPREC_START")]
    SiprecStart(SiprecEventParams),
    /// A SIPREC session ended (stopped by the API, by the call's end, or by the SRS's BYE).
    #[serde(rename = "E_SIPREC_STOP")]
    SiprecStop(SiprecEventParams),
    /// No SRS of the list accepted the session: each one tried and its reply.
    #[serde(rename = "E_SIPREC_FAILED")]
    SiprecFailed {
        dlg_id: String,
        dlg_callid: Option<String>,
        instance: String,
        attempts: Vec<crate::siprec::SrsAttempt>,
        timestamp: u64,
    },
    /// A recording started, finished or failed (the recording object, flattened).
    #[serde(rename_all = "camelCase")]
    RecordingStatusEvent {
        #[serde(flatten)]
        recording: Box<crate::record::RecordingInfo>,
        timestamp: u64,
    },
    #[serde(rename_all = "camelCase")]
    StreamStatusEvent {
        name: String,
        status: String,
        call_id: Option<String>,
        timestamp: u64,
    },
    /// An RTMP push's status (PENDING, CONNECTING, PUBLISHING, RECONNECTING, FAILED, STOPPED).
    /// Sent under WCS's hook name `StreamStatusEvent`, with the push's `mediaSessionId` and
    /// `rtmpUrl` as WCS sends them for a republished stream.
    #[serde(rename = "StreamStatusEvent", rename_all = "camelCase")]
    RtmpPushStatusEvent {
        media_session_id: String,
        name: String,
        status: String,
        rtmp_url: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        call_id: Option<String>,
        timestamp: u64,
    },
    /// A media stream to a WebSocket server (voice agents): `event` is
    /// `MediaStreamStarted` (each connection; `reconnects` says which),
    /// `MediaStreamReconnecting`, `MediaStreamStopped` or `MediaStreamFailed`.
    #[serde(rename_all = "camelCase")]
    MediaStreamEvent {
        call_id: String,
        stream_sid: String,
        event: String,
        /// Without credentials or query.
        url: String,
        reconnects: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        timestamp: u64,
    },
}

impl Event {
    /// The event's `type` as serialised (`CallStatusEvent`, `E_SIPREC_START`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::CallStatusEvent { .. } => "CallStatusEvent",
            Event::CallControlEvent { .. } => "CallControlEvent",
            Event::DtmfEvent { .. } => "DtmfEvent",
            Event::RegistrationStatusEvent { .. } => "RegistrationStatusEvent",
            Event::SiprecStart(_) => "E_SIPREC_START",
            Event::SiprecStop(_) => "E_SIPREC_STOP",
            Event::SiprecFailed { .. } => "E_SIPREC_FAILED",
            Event::RecordingStatusEvent { .. } => "RecordingStatusEvent",
            Event::StreamStatusEvent { .. } | Event::RtmpPushStatusEvent { .. } => {
                "StreamStatusEvent"
            }
            Event::MediaStreamEvent { .. } => "MediaStreamEvent",
        }
    }

    /// The call the event is about, if any (what subscribers filter on).
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Event::CallStatusEvent { call_id, .. }
            | Event::CallControlEvent { call_id, .. }
            | Event::DtmfEvent { call_id, .. }
            | Event::MediaStreamEvent { call_id, .. } => Some(call_id),
            Event::SiprecStart(p) | Event::SiprecStop(p) => Some(&p.dlg_id),
            Event::SiprecFailed { dlg_id, .. } => Some(dlg_id),
            Event::RecordingStatusEvent { recording, .. } => recording.call_id.as_deref(),
            Event::StreamStatusEvent { call_id, .. }
            | Event::RtmpPushStatusEvent { call_id, .. } => call_id.as_deref(),
            Event::RegistrationStatusEvent { .. } => None,
        }
    }

    /// The call-api style name of what happened, for JSON-RPC notifications' `event`: the
    /// control step for call control (`CallHoldSuccessful`...), the status for a call's
    /// status (`RING`, `ESTABLISHED`, `FINISH`...), else the event's type.
    pub fn name(&self) -> &str {
        match self {
            Event::CallControlEvent { event, .. } | Event::MediaStreamEvent { event, .. } => event,
            Event::CallStatusEvent { status, .. } => status,
            other => other.kind(),
        }
    }
}

/// Parameters of `E_SIPREC_START` / `E_SIPREC_STOP`.
#[derive(Debug, Clone, Serialize)]
pub struct SiprecEventParams {
    /// Our call id.
    pub dlg_id: String,
    /// SIP Call-ID of the recorded call.
    pub dlg_callid: Option<String>,
    /// Call-ID of the SIPREC dialog.
    pub callid: String,
    /// RFC 7865 session id.
    pub session_id: String,
    /// The SRS that answered.
    pub server: String,
    pub instance: String,
    pub timestamp: u64,
}

/// Cloneable handle to the bus.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl EventBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Self { tx }
    }

    /// Publishes without waiting; with no subscriber the event is simply not delivered.
    pub fn publish(&self, event: Event) {
        tracing::debug!(?event, "event");
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

/// Milliseconds since the Unix epoch, for event timestamps.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_reach_subscribers_as_wcs_json() {
        let bus = EventBus::new(16);
        let mut rx = bus.subscribe();
        bus.publish(Event::CallStatusEvent {
            call_id: "c1".into(),
            status: "ESTABLISHED".into(),
            sip_status: Some(200),
            reason: None,
            stream_name: "s1".into(),
            callee: "sip:1@x".into(),
            timestamp: 1,
        });
        let ev = rx.recv().await.unwrap();
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], "CallStatusEvent");
        assert_eq!(json["callId"], "c1");
        assert_eq!(json["sipStatus"], 200);
    }
}
