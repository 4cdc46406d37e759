//! One SIP leg of a call: its dialog (the UA key), its status, its media lines and our side
//! of its SDP session, its hold and transfer state. A call has one leg (outbound to the
//! callee, or inbound from the caller) or two (a two-party call bridged by the gateway).

use std::net::{IpAddr, SocketAddr};

use super::model::{LegInfo, LegTrackInfo};
use crate::registry::{Leg, TrackId, TrackKind};
use crate::rtp::driver::LegHandle;
use crate::rtp::ports::BoundPair;
use crate::rtp::srtp::{CryptoAttribute, SrtpKeys, SrtpPolicy, Suite};
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
    /// SRTP with SDES (RFC 4568) on this leg's media lines.
    pub(super) srtp: SrtpPolicy,
    /// We ended the leg for a reason of ours: it ends with this phase, SIP status and reason
    /// whatever the UA reports (the far end's SDP could not give the SRTP the policy demands:
    /// FAILED 488; an inbound call nobody answered: FAILED 480).
    pub(super) end_as: Option<(CallPhase, u16, String)>,
    /// When the transfer in progress fails for want of its final NOTIFY.
    pub(super) transfer_deadline: Option<std::time::Instant>,
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
            srtp: SrtpPolicy::Off,
            end_as: None,
            transfer_deadline: None,
        }
    }

    /// Fresh SDES keys on every media line for our offer, when the policy asks for SRTP:
    /// one line per suite we take, each with its own key (RFC 4568 §6.1 gives each
    /// attribute its own key).
    pub(super) fn offer_srtp(&mut self) {
        if self.srtp == SrtpPolicy::Off {
            return;
        }
        for m in &mut self.media {
            m.crypto = Suite::ALL
                .iter()
                .zip(1u32..)
                .map(|(suite, tag)| CryptoAttribute::fresh(tag, *suite))
                .collect();
        }
    }

    /// Our answer to `offer` with SRTP settled per media line (RFC 4568 §7.1.2): the first
    /// crypto line of the offer we can use is answered with its tag and suite and a key of
    /// ours, with the offer's transport profile. Err (a 488) when the policy or the offer
    /// demands SRTP that cannot be had; the error never contains a key.
    pub(super) fn secure_answer(
        &mut self,
        answer: &mut SessionDescription,
        offer: &SessionDescription,
    ) -> Result<(), String> {
        for (i, a) in answer.media.iter_mut().enumerate() {
            let Some(o) = offer.media.get(i) else {
                continue;
            };
            let secure = sdp::is_secure_proto(&o.proto);
            let Some(leg) = self.media.iter_mut().find(|m| m.local_port == a.port) else {
                continue;
            };
            if a.port == 0 {
                continue;
            }
            a.proto = o.proto.clone();
            let theirs = sdp::crypto_lines(o).find_map(Result::ok);
            match theirs {
                Some(t) if self.srtp != SrtpPolicy::Off => {
                    // Keep our key across re-INVITEs of the same suite: the far end keeps
                    // decrypting while the new answer travels.
                    let key = leg
                        .crypto
                        .iter()
                        .find(|c| c.suite == t.suite)
                        .map(|c| c.key.clone())
                        .unwrap_or_else(|| CryptoAttribute::fresh(t.tag, t.suite).key);
                    let ours = CryptoAttribute {
                        tag: t.tag,
                        suite: t.suite,
                        key,
                    };
                    sdp::set_crypto_lines(a, std::slice::from_ref(&ours));
                    leg.crypto = vec![ours];
                }
                _ if secure || self.srtp == SrtpPolicy::Mandatory => {
                    return Err(if self.srtp == SrtpPolicy::Off {
                        "the offer requires SRTP (RTP/SAVP) and srtp is off".to_string()
                    } else {
                        "the offer has no a=crypto line we support (AES_CM_128_HMAC_SHA1_80/32, inline key)"
                            .to_string()
                    });
                }
                _ => {
                    sdp::set_crypto_lines(a, &[]);
                    leg.crypto.clear();
                }
            }
        }
        Ok(())
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
        let mut sd = sdp::build_offer_lines(0, 0, ip, &lines, want);
        for (d, m) in sd.media.iter_mut().zip(&self.media) {
            if m.crypto.is_empty() {
                continue;
            }
            sdp::set_crypto_lines(d, &m.crypto);
            // Optional SRTP offers RTP/AVP with crypto lines (best effort), mandatory
            // RTP/SAVP; after an answer the line keeps the profile that was agreed.
            if self.srtp == SrtpPolicy::Mandatory || m.srtp_savp {
                d.proto = "RTP/SAVP".into();
            }
        }
        sd
    }

    /// The SRTP keys of media line `m` given the far end's section `remote` (`offer`: that
    /// section is an offer we answered, else the answer to ours). Ok(None): plain RTP.
    pub(super) fn srtp_keys(
        policy: SrtpPolicy,
        m: &mut MediaLeg,
        remote: &sdp::MediaDescription,
        offer: bool,
    ) -> Result<Option<SrtpKeys>, String> {
        let secure = sdp::is_secure_proto(&remote.proto);
        let usable: Vec<CryptoAttribute> =
            sdp::crypto_lines(remote).filter_map(Result::ok).collect();
        let pair = if policy == SrtpPolicy::Off || m.crypto.is_empty() {
            None
        } else if offer {
            usable.first().and_then(|t| {
                m.crypto
                    .iter()
                    .find(|c| c.tag == t.tag && c.suite == t.suite)
                    .map(|c| (c.clone(), t.clone()))
            })
        } else {
            // RFC 4568 §7.1.3: the answer names the tag of the line it took; by suite when
            // a peer renumbers.
            usable
                .iter()
                .find_map(|t| {
                    m.crypto
                        .iter()
                        .find(|c| c.tag == t.tag && c.suite == t.suite)
                        .map(|c| (c.clone(), t.clone()))
                })
                .or_else(|| {
                    usable.iter().find_map(|t| {
                        m.crypto
                            .iter()
                            .find(|c| c.suite == t.suite)
                            .map(|c| (c.clone(), t.clone()))
                    })
                })
        };
        match pair {
            Some((ours, theirs)) => {
                m.srtp_savp = secure;
                let keys = SrtpKeys {
                    suite: theirs.suite,
                    ours: ours.key.clone(),
                    theirs: theirs.key,
                };
                m.crypto = vec![ours];
                Ok(Some(keys))
            }
            None if policy == SrtpPolicy::Mandatory => Err(if usable.is_empty() {
                let bad = sdp::crypto_lines(remote).find_map(Result::err);
                match bad {
                    Some(e) => {
                        format!("SRTP mandatory, but the far end's crypto line is unusable: {e}")
                    }
                    None => {
                        "SRTP mandatory, but the far end's SDP has no a=crypto line".to_string()
                    }
                }
            } else {
                "SRTP mandatory, but the far end's a=crypto matches none we offered".to_string()
            }),
            None if secure => {
                Err("the far end asks for RTP/SAVP without a usable a=crypto line".to_string())
            }
            None => {
                m.crypto.clear();
                Ok(None)
            }
        }
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
                        srtp: m.srtp.map(|s| s.name().to_string()),
                        srtp_auth_failures: m
                            .running
                            .as_ref()
                            .and_then(|(h, _)| h.stats().srtp)
                            .map(|(_, c)| c.auth_failures)
                            .unwrap_or(0),
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
    /// Our SDES lines: all we offer until an answer picks one, then that one.
    pub(super) crypto: Vec<CryptoAttribute>,
    /// The suite of the running SRTP (None: plain RTP).
    pub(super) srtp: Option<Suite>,
    /// The keys the running leg uses (compared on re-INVITEs; never shown or logged).
    pub(super) srtp_keys: Option<SrtpKeys>,
    /// The agreed profile is RTP/SAVP (our re-offers keep it).
    pub(super) srtp_savp: bool,
}

impl MediaLeg {
    pub(super) fn new(
        kind: TrackKind,
        offered: Vec<RtpMap>,
        local_port: u16,
        pair: BoundPair,
    ) -> Self {
        Self {
            pair: Some(pair),
            ..Self::unbound(kind, offered, local_port)
        }
    }

    /// A media line with no ports of its own (yet): the base of [`MediaLeg::new`], and of
    /// lines the tests build.
    pub(super) fn unbound(kind: TrackKind, offered: Vec<RtpMap>, local_port: u16) -> Self {
        Self {
            kind,
            offered,
            local_port,
            pair: None,
            running: None,
            codec: None,
            remote: None,
            direction: None,
            dtmf: None,
            label: None,
            player: None,
            crypto: Vec::new(),
            srtp: None,
            srtp_keys: None,
            srtp_savp: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::sdp::codec_pcmu;

    const KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

    fn leg(policy: SrtpPolicy) -> CallLeg {
        let mut l = CallLeg::new(Leg::Callee, 1, "sip:a@b");
        let m = MediaLeg::unbound(TrackKind::Audio, vec![codec_pcmu()], 30000);
        l.media.push(m);
        l.srtp = policy;
        l
    }

    fn remote(proto: &str, crypto: &[&str]) -> SessionDescription {
        let mut text = format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        for c in crypto {
            text.push_str(&format!("a=crypto:{c}\r\n"));
        }
        SessionDescription::parse(&text).unwrap()
    }

    #[test]
    fn mandatory_offers_savp_with_a_key_per_suite_and_takes_the_answered_one() {
        let mut l = leg(SrtpPolicy::Mandatory);
        l.offer_srtp();
        let offer = l.local_sdp(Direction::SendRecv).to_string();
        assert!(offer.contains("m=audio 30000 RTP/SAVP 0"), "{offer}");
        assert!(
            offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{offer}"
        );
        assert!(
            offer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"),
            "{offer}"
        );
        let answer = remote(
            "RTP/SAVP",
            &[&format!("2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}")],
        );
        let m = &mut l.media[0];
        let keys = CallLeg::srtp_keys(SrtpPolicy::Mandatory, m, &answer.media[0], false)
            .unwrap()
            .unwrap();
        assert_eq!(keys.suite, Suite::AesCm128HmacSha1_32);
        assert_eq!(m.crypto.len(), 1);
        assert_eq!(m.crypto[0].tag, 2);
        // The answer's key is theirs, not ours.
        assert_ne!(keys.ours, keys.theirs);
    }

    #[test]
    fn mandatory_without_usable_crypto_is_an_error_that_names_no_key() {
        for crypto in [
            vec![],
            vec!["1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
            vec!["1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"],
        ] {
            let mut l = leg(SrtpPolicy::Mandatory);
            l.offer_srtp();
            let answer = remote("RTP/SAVP", &crypto);
            let e = CallLeg::srtp_keys(
                SrtpPolicy::Mandatory,
                &mut l.media[0],
                &answer.media[0],
                false,
            )
            .unwrap_err();
            assert!(e.starts_with("SRTP mandatory"), "{e}");
            assert!(!e.contains("AAAA") && !e.contains("PS1u"), "{e}");
        }
        // Optional: the same answer without crypto is plain RTP.
        let mut l = leg(SrtpPolicy::Optional);
        l.offer_srtp();
        let offer = l.local_sdp(Direction::SendRecv).to_string();
        assert!(offer.contains("m=audio 30000 RTP/AVP 0"), "{offer}");
        let answer = remote("RTP/AVP", &[]);
        assert_eq!(
            CallLeg::srtp_keys(
                SrtpPolicy::Optional,
                &mut l.media[0],
                &answer.media[0],
                false
            ),
            Ok(None)
        );
        assert!(l.media[0].crypto.is_empty());
    }

    #[test]
    fn answers_take_the_first_usable_offered_line_or_488() {
        let offer = remote(
            "RTP/SAVP",
            &[
                "1 AES_256_CM_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
                &format!("7 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20"),
            ],
        );
        let mut l = leg(SrtpPolicy::Optional);
        let mut answer = sdp::answer(
            &l.local_sdp(Direction::SendRecv),
            &offer,
            Direction::SendRecv,
        );
        l.secure_answer(&mut answer, &offer).unwrap();
        let text = answer.to_string();
        assert!(text.contains("m=audio 30000 RTP/SAVP 0"), "{text}");
        assert!(
            text.contains("a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{text}"
        );
        assert!(!text.contains(KEY), "our own key, not theirs: {text}");
        let keys = CallLeg::srtp_keys(SrtpPolicy::Optional, &mut l.media[0], &offer.media[0], true)
            .unwrap()
            .unwrap();
        assert_eq!(keys.suite, Suite::AesCm128HmacSha1_80);
        // SAVP with nothing usable, or SAVP while srtp is off: 488.
        let bad = remote(
            "RTP/SAVP",
            &["1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
        );
        for policy in [SrtpPolicy::Optional, SrtpPolicy::Off] {
            let mut l = leg(policy);
            let mut a = sdp::answer(&l.local_sdp(Direction::SendRecv), &bad, Direction::SendRecv);
            assert!(l.secure_answer(&mut a, &bad).is_err());
        }
        let mut l = leg(SrtpPolicy::Off);
        let mut a = sdp::answer(
            &l.local_sdp(Direction::SendRecv),
            &offer,
            Direction::SendRecv,
        );
        assert!(l.secure_answer(&mut a, &offer).is_err());
        // Plain offer, srtp off: answered plain.
        let plain = remote(
            "RTP/AVP",
            &[&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}")],
        );
        let mut a = sdp::answer(
            &l.local_sdp(Direction::SendRecv),
            &plain,
            Direction::SendRecv,
        );
        l.secure_answer(&mut a, &plain).unwrap();
        assert!(!a.to_string().contains("crypto"));
    }
}
