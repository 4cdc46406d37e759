//! One SIP leg of a call: its dialog (the UA key), its status, its media lines and our side
//! of its SDP session, its hold and transfer state. A call has one leg (outbound to the
//! callee, or inbound from the caller) or two (a two-party call bridged by the gateway).

use std::net::{IpAddr, SocketAddr};

use super::model::{LegInfo, LegTrackInfo};
use crate::registry::{Leg, TrackId, TrackKind};
use crate::rtp::driver::LegHandle;
use crate::rtp::ports::BoundPair;
use crate::sip::sdp::{
    self, Direction, LocalSession, MediaKind, OfferLine, RtpMap, SessionDescription,
};
use crate::sip::ua::{CallKey, CallPhase, PlaceCall};

pub(super) struct CallLeg {
    /// Which party: the registry's tracks of this leg carry the same name.
    pub(super) name: Leg,
    pub(super) key: CallKey,
    /// The far end's URI (the party we called, or who called us).
    pub(super) uri: String,
    pub(super) status: CallPhase,
    pub(super) sip_status: Option<u16>,
    pub(super) sip_call_id: Option<String>,
    pub(super) media: Vec<MediaLeg>,
    /// Our side of the SDP session (origin id and version).
    pub(super) sdp: LocalSession,
    /// The address our SDP announces.
    pub(super) media_ip: Option<IpAddr>,
    pub(super) hold: HoldState,
    /// A transfer of this leg's far end by REFER in progress (or the last one).
    pub(super) transfer: Option<super::transfer::Transfer>,
    /// Our BYE after a successful transfer: the call ends as "transferred".
    pub(super) transferred_to: Option<String>,
    /// How this leg's INVITE went out (account, route), the base of a new INVITE when the
    /// far end transfers us (REFER): for inbound legs, a route back to the caller's host.
    pub(super) template: Option<Box<PlaceCall>>,
    /// The far end REFERred us: the new leg's UA key and its target, until it answers.
    pub(super) replacement: Option<(CallKey, String)>,
    /// Music on hold playing into this leg while we hold it.
    pub(super) music: Option<super::play::PlayHandle>,
    /// The leg only receives what the gateway sends (a fork or a listener of another call's
    /// media): our offers and answers say sendonly (inactive while held).
    pub(super) send_only: bool,
    /// RFC 3263: the next addresses to try (later SRV targets) when the INVITE gets 503, times
    /// out or cannot be sent.
    pub(super) alternates: Vec<std::net::SocketAddr>,
}

/// The API's name of a leg: `caller` or `callee`.
pub(super) fn leg_name(leg: Leg) -> &'static str {
    match leg {
        Leg::Caller => "caller",
        _ => "callee",
    }
}

impl CallLeg {
    /// Stops the music on hold, if any.
    pub(super) fn stop_music(&mut self) {
        if let Some(m) = self.music.take() {
            m.stop();
        }
    }
}

/// Who holds whom.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HoldState {
    /// We hold the far end (our last accepted offer was sendonly).
    pub(super) ours: bool,
    /// A hold (true) or unhold (false) re-INVITE of ours is in flight.
    pub(super) pending: Option<bool>,
}

impl CallLeg {
    pub(super) fn new(name: Leg, key: CallKey, uri: &str) -> Self {
        Self {
            name,
            key,
            uri: uri.to_string(),
            status: CallPhase::Pending,
            sip_status: None,
            sip_call_id: None,
            media: Vec::new(),
            sdp: LocalSession::new(rand::random::<u32>() as u64),
            media_ip: None,
            hold: HoldState::default(),
            transfer: None,
            transferred_to: None,
            template: None,
            replacement: None,
            alternates: Vec::new(),
            send_only: false,
            music: None,
        }
    }

    pub(super) fn name_str(&self) -> &'static str {
        leg_name(self.name)
    }

    /// Our description of the leg's media, one line per media line in order, with
    /// direction `want` on every section.
    pub(super) fn local_sdp(&self, want: Direction) -> SessionDescription {
        let lines: Vec<OfferLine> = self
            .media
            .iter()
            .map(|m| OfferLine {
                kind: match m.kind {
                    TrackKind::Audio => MediaKind::Audio,
                    TrackKind::Video => MediaKind::Video,
                },
                port: m.local_port,
                codecs: m.offered.clone(),
                label: m.label.clone(),
            })
            .collect();
        let ip = self
            .media_ip
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        sdp::build_offer_lines(0, 0, ip, &lines, want)
    }

    /// The `line`-th audio line (0: the first).
    pub(super) fn audio_line(&mut self, line: usize) -> Option<&mut MediaLeg> {
        self.media
            .iter_mut()
            .filter(|m| m.kind == TrackKind::Audio)
            .nth(line)
    }

    /// The direction we ask for: sendonly while we hold the far end.
    pub(super) fn want(&self) -> Direction {
        match (self.hold.ours, self.send_only) {
            (true, true) => Direction::Inactive,
            (true, false) | (false, true) => Direction::SendOnly,
            (false, false) => Direction::SendRecv,
        }
    }

    /// The far end holds us: every negotiated line is sendonly or inactive on its side.
    pub(super) fn peer_holds(&self) -> bool {
        let directions: Vec<Direction> = self.media.iter().filter_map(|m| m.direction).collect();
        !directions.is_empty()
            && directions
                .iter()
                .all(|d| matches!(d, Direction::SendOnly | Direction::Inactive))
    }

    pub(super) fn info(&self) -> LegInfo {
        LegInfo {
            name: self.name_str().into(),
            uri: self.uri.clone(),
            status: self.status.as_str().to_string(),
            sip_call_id: self.sip_call_id.clone(),
            tracks: self
                .media
                .iter()
                .map(|m| {
                    let stats = m.running.as_ref().map(|(h, _)| h.stats().session);
                    LegTrackInfo {
                        kind: match m.kind {
                            TrackKind::Audio => "audio".into(),
                            TrackKind::Video => "video".into(),
                        },
                        codec: m.codec.as_ref().map(|c| c.encoding.clone()),
                        payload_type: m.codec.as_ref().map(|c| c.pt),
                        local_rtp_port: m.local_port,
                        remote_rtp: m.remote.map(|a| a.to_string()),
                        direction: m.direction.map(|d| d.to_string()),
                        packets_received: stats.as_ref().map(|s| s.rx_packets).unwrap_or(0),
                        packets_sent: stats.as_ref().map(|s| s.tx_packets).unwrap_or(0),
                        invalid_packets: stats.as_ref().map(|s| s.invalid).unwrap_or(0),
                    }
                })
                .collect(),
        }
    }
}

/// One media line of a leg: ports reserved at startup, RTP running once negotiated.
pub(super) struct MediaLeg {
    pub(super) kind: TrackKind,
    pub(super) offered: Vec<RtpMap>,
    pub(super) local_port: u16,
    pub(super) pair: Option<BoundPair>,
    pub(super) running: Option<(LegHandle, TrackId)>,
    pub(super) codec: Option<RtpMap>,
    pub(super) remote: Option<SocketAddr>,
    pub(super) direction: Option<Direction>,
    /// The negotiated telephone-event format (RFC 4733), if the far end took it.
    pub(super) dtmf: Option<RtpMap>,
    /// `a=label` of our offer: which line is which when a leg has two audio lines (a
    /// media exchange forking each party on its own line).
    pub(super) label: Option<String>,
    /// What plays into this line (hold music, agents, injected sounds and streams, a
    /// media exchange), mixed.
    pub(super) player: Option<super::play::LegPlayer>,
}

impl MediaLeg {
    pub(super) fn new(
        kind: TrackKind,
        offered: Vec<RtpMap>,
        local_port: u16,
        pair: BoundPair,
    ) -> Self {
        Self {
            kind,
            offered,
            local_port,
            pair: Some(pair),
            running: None,
            codec: None,
            remote: None,
            direction: None,
            dtmf: None,
            label: None,
            player: None,
        }
    }
}
