//! The `from_stream` adapter of the RTMP push: registry events in, FLV tags on one timeline
//! out. Picks the stream's first audio and first video track, converts audio
//! ([`super::audio`]), depacketises H264 ([`crate::media::h264`]) and maps RTP time to the push's
//! timeline ([`super::clock`]).
//!
//! Sans-IO: arrival instants come with the media units, the epoch is given at creation.
//! Knows nothing about connections: the driver decides which tags a connection gets
//! (sequence headers first, video from a keyframe on).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::audio::{AudioCodecPolicy, AudioFormat, AudioPath, AudioTag};
use super::clock::TrackClock;
use super::flv;
use crate::media::h264::Depacketizer;
use crate::registry::{MediaUnit, TrackId, TrackKind, TrackSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Audio,
    Video,
}

/// One FLV tag for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvTag {
    pub kind: TagKind,
    /// Milliseconds on the push's timeline.
    pub ms: i64,
    pub body: Bytes,
    pub keyframe: bool,
}

/// What a connection announces in onMetaData; a change needs a new publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub audio: Option<AudioFormat>,
    pub video: bool,
}

struct AudioTrack {
    id: TrackId,
    path: AudioPath,
    clock: TrackClock,
}

struct VideoTrack {
    id: TrackId,
    depack: Depacketizer,
    clock: TrackClock,
    header: Option<Bytes>,
}

pub struct Muxer {
    policy: AudioCodecPolicy,
    epoch: Instant,
    audio: Option<AudioTrack>,
    video: Option<VideoTrack>,
    /// The audio track we cannot convert (Opus) and why.
    unsupported_audio: Option<(TrackId, String)>,
    out: VecDeque<FlvTag>,
    scratch: Vec<AudioTag>,
    /// Media units of tracks we do not push (a second audio leg, ...).
    pub ignored_units: u64,
    /// Packets the converters refused (malformed H264, encoder errors).
    pub errors: u64,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("shape", &self.shape())
            .finish()
    }
}

impl Muxer {
    pub fn new(policy: AudioCodecPolicy, epoch: Instant) -> Self {
        Self {
            policy,
            epoch,
            audio: None,
            video: None,
            unsupported_audio: None,
            out: VecDeque::new(),
            scratch: Vec::new(),
            ignored_units: 0,
            errors: 0,
        }
    }

    pub fn shape(&self) -> Shape {
        Shape {
            audio: self.audio.as_ref().map(|a| a.path.format()),
            video: self.video.is_some(),
        }
    }

    /// Whether there is anything to publish (a track we can push).
    pub fn has_tracks(&self) -> bool {
        self.audio.is_some() || self.video.is_some()
    }

    /// Why the stream's audio is not pushed, if it is not.
    pub fn unsupported_audio(&self) -> Option<&str> {
        self.unsupported_audio.as_ref().map(|(_, why)| why.as_str())
    }

    /// A track was announced or changed. Returns a warning to log when it cannot be pushed.
    pub fn track(&mut self, id: TrackId, spec: &TrackSpec) -> Option<String> {
        match spec.kind {
            TrackKind::Audio => {
                if self.audio.as_ref().is_some_and(|a| a.id != id) {
                    return None;
                }
                if self.audio.is_none()
                    && self
                        .unsupported_audio
                        .as_ref()
                        .is_some_and(|(u, _)| *u != id)
                {
                    return None;
                }
                match AudioPath::new(self.policy, &spec.codec) {
                    Ok(path) => {
                        self.audio = Some(AudioTrack {
                            id,
                            path,
                            clock: TrackClock::new(spec.clock_rate),
                        });
                        self.unsupported_audio = None;
                        None
                    }
                    Err(e) => {
                        self.audio = None;
                        self.unsupported_audio = Some((id, e.to_string()));
                        Some(e.to_string())
                    }
                }
            }
            TrackKind::Video => {
                if self.video.as_ref().is_some_and(|v| v.id != id) {
                    return None;
                }
                if !spec.codec.eq_ignore_ascii_case("H264") {
                    return Some(format!("{} video cannot be pushed (H264 only)", spec.codec));
                }
                let mut depack = Depacketizer::new();
                if let Some(f) = &spec.fmtp {
                    depack.set_fmtp(f);
                }
                self.video = Some(VideoTrack {
                    id,
                    depack,
                    clock: TrackClock::new(spec.clock_rate.max(1)),
                    header: None,
                });
                None
            }
        }
    }

    fn arrival_ms(&self, unit: &MediaUnit) -> i64 {
        unit.arrival
            .checked_duration_since(self.epoch)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    /// One media unit from the registry.
    pub fn media(&mut self, unit: &MediaUnit) {
        let arrival = self.arrival_ms(unit);
        if let Some(a) = self.audio.as_mut().filter(|a| a.id == unit.track) {
            let ms = a.clock.map(unit.ssrc, unit.timestamp, arrival);
            self.scratch.clear();
            if let Err(e) = a.path.push(ms, &unit.payload, &mut self.scratch) {
                self.errors += 1;
                tracing::debug!(error = %e, "audio packet not converted");
            }
            for t in self.scratch.drain(..) {
                self.out.push_back(FlvTag {
                    kind: TagKind::Audio,
                    ms: t.ms,
                    body: t.body,
                    keyframe: false,
                });
            }
        } else if let Some(v) = self.video.as_mut().filter(|v| v.id == unit.track) {
            if let Err(e) = v
                .depack
                .push(unit.seq, unit.timestamp, unit.marker, &unit.payload)
            {
                self.errors += 1;
                tracing::trace!(error = %e, "H264 packet dropped");
            }
            while let Some(au) = v.depack.pull() {
                let ms = v.clock.map(unit.ssrc, au.timestamp, arrival);
                if v.depack.take_params_changed() {
                    if let Some((sps, pps)) = v.depack.parameter_sets() {
                        v.header = flv::avc_sequence_header(sps, pps);
                        if let Some(h) = &v.header {
                            self.out.push_back(FlvTag {
                                kind: TagKind::Video,
                                ms,
                                body: h.clone(),
                                keyframe: true,
                            });
                        }
                    }
                }
                if v.header.is_none() {
                    // Undecodable without SPS/PPS.
                    continue;
                }
                self.out.push_back(FlvTag {
                    kind: TagKind::Video,
                    ms,
                    body: flv::avc_frame(au.keyframe, au.nalus.iter().map(|n| &n[..])),
                    keyframe: au.keyframe,
                });
            }
        } else {
            self.ignored_units += 1;
        }
    }

    /// The sequence headers a new connection sends before any frame (AAC config, AVC config).
    pub fn headers(&self) -> Vec<(TagKind, Bytes)> {
        let mut h = Vec::new();
        if let Some(b) = self.audio.as_ref().and_then(|a| a.path.sequence_header()) {
            h.push((TagKind::Audio, b));
        }
        if let Some(b) = self.video.as_ref().and_then(|v| v.header.clone()) {
            h.push((TagKind::Video, b));
        }
        h
    }

    /// The next tag, in production order.
    pub fn pull(&mut self) -> Option<FlvTag> {
        self.out.pop_front()
    }
}

/// Whether a tag body is a sequence header (AAC config or AVC config).
pub fn is_sequence_header(tag: &FlvTag) -> bool {
    tag.body.get(1) == Some(&0)
        && match tag.kind {
            TagKind::Audio => tag.body.first() == Some(&flv::AAC_HEADER),
            TagKind::Video => tag.body.first().is_some_and(|b| b & 0x0F == 7),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(kind: TrackKind, codec: &str, rate: u32) -> TrackSpec {
        TrackSpec {
            kind,
            ..TrackSpec::audio(codec, rate, 0)
        }
    }

    fn unit(
        track: TrackId,
        seq: u16,
        ts: u32,
        marker: bool,
        payload: &[u8],
        at: Instant,
    ) -> MediaUnit {
        MediaUnit {
            track,
            payload_type: 0,
            seq,
            timestamp: ts,
            marker,
            ssrc: 9,
            payload: Bytes::copy_from_slice(payload),
            arrival: at,
        }
    }

    #[test]
    fn audio_and_video_share_one_timeline() {
        let t0 = Instant::now();
        let mut m = Muxer::new(AudioCodecPolicy::Copy, t0);
        assert!(m.track(0, &spec(TrackKind::Audio, "PCMU", 8000)).is_none());
        assert!(m.track(1, &spec(TrackKind::Video, "H264", 90000)).is_none());
        assert_eq!(
            m.shape(),
            Shape {
                audio: Some(AudioFormat {
                    codec_id: 8,
                    sample_rate: 8000,
                    bitrate_kbps: Some(64)
                }),
                video: true
            }
        );
        // Audio's RTP clock starts at 4e9, video's at 7; both arrive 500 ms in.
        let at = t0 + Duration::from_millis(500);
        m.media(&unit(0, 1, 4_000_000_000, false, &[0xFF; 160], at));
        m.media(&unit(
            1,
            1,
            7,
            false,
            &[24, 0, 4, 0x67, 0x42, 0, 0x1E, 0, 2, 0x68, 0xCE],
            at,
        ));
        m.media(&unit(1, 2, 7, true, &[0x65, 1, 2], at));
        let at = t0 + Duration::from_millis(540);
        m.media(&unit(
            0,
            2,
            4_000_000_000u32.wrapping_add(320),
            false,
            &[0xFF; 160],
            at,
        ));
        m.media(&unit(1, 3, 7 + 3600, true, &[0x41, 3], at));
        let tags: Vec<_> = std::iter::from_fn(|| m.pull()).collect();
        let summary: Vec<_> = tags
            .iter()
            .map(|t| (t.kind, t.ms, t.keyframe, is_sequence_header(t)))
            .collect();
        assert_eq!(
            summary,
            vec![
                (TagKind::Audio, 500, false, false),
                (TagKind::Video, 500, true, true),
                (TagKind::Video, 500, true, false),
                (TagKind::Audio, 540, false, false),
                (TagKind::Video, 540, false, false),
            ]
        );
        assert_eq!(m.headers().len(), 1, "G.711 has no header, AVC has");
    }

    #[test]
    fn opus_is_taken_for_aac_refused_for_g711_and_other_tracks_ignored() {
        let mut m = Muxer::new(
            AudioCodecPolicy::Aac {
                sample_rate: 48000,
                bitrate: 64000,
            },
            Instant::now(),
        );
        assert!(m.track(0, &spec(TrackKind::Audio, "opus", 48000)).is_none());
        assert!(m.has_tracks());
        assert!(m.unsupported_audio().is_none());
        let mut g = Muxer::new(AudioCodecPolicy::Copy, Instant::now());
        assert!(g.track(0, &spec(TrackKind::Audio, "opus", 48000)).is_some());
        assert!(!g.has_tracks());
        assert!(g.unsupported_audio().is_some());
        g.media(&unit(0, 1, 0, false, &[1], Instant::now()));
        assert_eq!(g.ignored_units, 1);
        assert!(g.track(1, &spec(TrackKind::Video, "VP8", 90000)).is_some());
    }
}
