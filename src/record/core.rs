//! The sans-IO recorder: registry events in, MP4 bytes out.
//!
//! Owns track selection (the first audio track and the first H264 track of the stream), media
//! conversion (G.711 → Opus, Opus pass-through, H264 RTP → access units), the media timeline
//! ([`super::timeline`]) and the [`Fmp4Writer`]. It does not own files, tasks or clocks: the
//! driver passes arrival times (from [`MediaUnit::arrival`]) and the stop time.
//!
//! Drive contract:
//! 1. [`RecorderCore::handle_track`] for each `TrackChanged`, [`RecorderCore::handle_media`]
//!    for each `Media`, in the order the reader delivers them.
//! 2. After each call, drain [`RecorderCore::poll_output`] and apply each [`Output`] in order
//!    (`Append` at the end of the file, `Patch` at an absolute offset).
//! 3. [`RecorderCore::finish`] once; drain again. Calls after `finish` are ignored.
//!
//! The file's init segment is written once every selected track is ready (audio: a first
//! frame; video: SPS/PPS and a keyframe), or after [`RecorderConfig::wait_for_tracks_ms`] of
//! media with the tracks that are ready then; a track that becomes ready later is not recorded
//! (counted in [`CoreStats::late_track_samples`]). Until then, samples wait in memory.
//! An error ([`CoreError`]) ends the recording; input never panics.

use std::collections::VecDeque;
use std::time::Instant;

use thiserror::Error;

use super::fmp4::{Codec, Fmp4Error, Fmp4Writer, Fragment, Patch, Sample, TrackConfig};
use super::timeline::Timeline;
use crate::media::g711::OPUS_SILENCE_20MS;
use crate::media::h264::{parse_sps, AccessUnit, Depacketizer};
use crate::media::opus::{packet_samples_48k, G711Law, G711ToOpus, OpusError, FRAME_48K};
use crate::registry::{MediaUnit, TrackId, TrackKind, TrackSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Target fragment length (issue 3: about 1 s).
    pub fragment_ms: u64,
    /// How long (media time) to wait for every selected track before writing the header.
    pub wait_for_tracks_ms: u64,
    /// Start a new fragment at each video keyframe, and cut fragments by the video track's
    /// length, so that fragments can begin HLS segments and none is a sliver.
    pub fragment_at_keyframes: bool,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            fragment_ms: 1000,
            wait_for_tracks_ms: 3000,
            fragment_at_keyframes: false,
        }
    }
}

#[derive(Debug, Error)]
pub enum CoreError {
    #[error(transparent)]
    Opus(#[from] OpusError),
    #[error("mp4: {0}")]
    Mp4(#[from] Fmp4Error),
}

/// What the driver must do with the file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The init segment (`ftyp` + `moov`): the first bytes of the file.
    Init(Vec<u8>),
    /// A `moof` + `mdat`, appended after what came before.
    Fragment(Fragment),
    Patch(Patch),
}

impl Output {
    /// The bytes to append at the end of the file (`None` for a patch).
    pub fn appended(&self) -> Option<&[u8]> {
        match self {
            Output::Init(b) => Some(b),
            Output::Fragment(f) => Some(&f.bytes),
            Output::Patch(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub units: u64,
    /// Audio packets that arrived for media time already written.
    pub late_audio: u64,
    pub malformed: u64,
    /// Video access units dropped while waiting for a keyframe (start, after loss).
    pub video_waiting_keyframe: u64,
    pub video_damaged: u64,
    pub late_track_samples: u64,
    pub timeline_resyncs: u64,
    /// Silence inserted for gaps, in milliseconds.
    pub gap_fill_ms: u64,
    pub ignored_tracks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AudioMode {
    G711(G711Law),
    Opus,
}

fn audio_mode(codec: &str) -> Option<AudioMode> {
    match codec.to_ascii_uppercase().as_str() {
        "PCMU" => Some(AudioMode::G711(G711Law::Ulaw)),
        "PCMA" => Some(AudioMode::G711(G711Law::Alaw)),
        "OPUS" => Some(AudioMode::Opus),
        _ => None,
    }
}

struct AudioPath {
    track: TrackId,
    mode: AudioMode,
    /// The mode of the first packet: decides the sample entry (mono for transcoded G.711).
    first_mode: Option<AudioMode>,
    source_codec: String,
    timeline: Timeline,
    transcoder: Option<G711ToOpus>,
    /// End of the audio accepted so far, 48 kHz units (including transcoder backlog).
    cursor: Option<i64>,
    /// Next transcoded frame's dts.
    frame_dts: i64,
}

struct VideoPath {
    track: TrackId,
    timeline: Timeline,
    depack: Depacketizer,
    waiting_keyframe: bool,
    config: Option<(Vec<u8>, Vec<u8>, u16, u16)>,
    held: Option<(i64, AccessUnit)>,
    last_duration: u32,
    /// No picture recorded yet: the first keyframe is shown from media time 0.
    first: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Audio,
    Video,
}

pub struct RecorderCore {
    cfg: RecorderConfig,
    start: Option<Instant>,
    last_arrival_us: i64,
    audio: Option<AudioPath>,
    video: Option<VideoPath>,
    writer: Option<Fmp4Writer>,
    /// Writer track index per kind, once the header is written.
    audio_idx: Option<usize>,
    video_idx: Option<usize>,
    pending: Vec<(Kind, Sample)>,
    out: VecDeque<Output>,
    finished: bool,
    codecs: Vec<String>,
    /// dts of the last keyframe a fragment was started at
    /// ([`RecorderConfig::fragment_at_keyframes`]).
    last_keyframe_cut: Option<u64>,
    pub stats: CoreStats,
}

impl std::fmt::Debug for RecorderCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecorderCore")
            .field("stats", &self.stats)
            .field("codecs", &self.codecs)
            .finish()
    }
}

impl RecorderCore {
    pub fn new(cfg: RecorderConfig) -> Self {
        Self {
            cfg,
            start: None,
            last_arrival_us: 0,
            audio: None,
            video: None,
            writer: None,
            audio_idx: None,
            video_idx: None,
            pending: Vec::new(),
            out: VecDeque::new(),
            finished: false,
            codecs: Vec::new(),
            last_keyframe_cut: None,
            stats: CoreStats::default(),
        }
    }

    /// The codecs in the file, e.g. `["opus (from PCMU)", "H264 320x240"]`; empty until
    /// the header is written.
    pub fn codecs(&self) -> &[String] {
        &self.codecs
    }

    /// Media written or buffered, in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.writer.as_ref().map(|w| w.duration_ms()).unwrap_or(0)
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn handle_track(&mut self, id: TrackId, spec: &TrackSpec) {
        if self.finished {
            return;
        }
        match spec.kind {
            TrackKind::Audio => match (&mut self.audio, audio_mode(&spec.codec)) {
                (Some(a), Some(mode)) if a.track == id => {
                    if a.mode != mode {
                        tracing::debug!(track = id, codec = %spec.codec, "recorded audio codec changed");
                    }
                    a.mode = mode;
                    if a.timeline.clock_rate() != spec.clock_rate {
                        a.timeline = Timeline::new(spec.clock_rate);
                    }
                }
                (None, Some(mode)) => {
                    self.audio = Some(AudioPath {
                        track: id,
                        mode,
                        first_mode: None,
                        source_codec: spec.codec.clone(),
                        timeline: Timeline::new(spec.clock_rate),
                        transcoder: None,
                        cursor: None,
                        frame_dts: 0,
                    });
                }
                (Some(a), None) if a.track == id => {
                    tracing::warn!(track = id, codec = %spec.codec, "audio codec cannot be recorded; track dropped");
                    self.audio = None;
                    self.stats.ignored_tracks += 1;
                }
                _ => self.stats.ignored_tracks += 1,
            },
            TrackKind::Video => {
                let h264 = spec.codec.eq_ignore_ascii_case("H264");
                match &self.video {
                    None if h264 => {
                        self.video = Some(VideoPath {
                            track: id,
                            timeline: Timeline::new(spec.clock_rate),
                            depack: Depacketizer::new(),
                            waiting_keyframe: true,
                            config: None,
                            held: None,
                            last_duration: spec.clock_rate / 25,
                            first: true,
                        });
                    }
                    Some(v) if v.track == id && !h264 => {
                        tracing::warn!(track = id, codec = %spec.codec, "video codec cannot be recorded; track dropped");
                        self.video = None;
                        self.stats.ignored_tracks += 1;
                    }
                    Some(v) if v.track == id => {}
                    _ => self.stats.ignored_tracks += 1,
                }
            }
        }
    }

    pub fn handle_media(&mut self, unit: &MediaUnit) -> Result<(), CoreError> {
        if self.finished {
            return Ok(());
        }
        self.stats.units += 1;
        let start = *self.start.get_or_insert(unit.arrival);
        let arrival_us = i64::try_from(unit.arrival.saturating_duration_since(start).as_micros())
            .unwrap_or(i64::MAX);
        self.last_arrival_us = self.last_arrival_us.max(arrival_us);
        let mut samples = Vec::new();
        if self.audio.as_ref().is_some_and(|a| a.track == unit.track) {
            self.audio_unit(unit, arrival_us, &mut samples)?;
        } else if self.video.as_ref().is_some_and(|v| v.track == unit.track) {
            self.video_unit(unit, arrival_us, &mut samples);
        }
        for (kind, s) in samples {
            self.sample(kind, s)?;
        }
        self.maybe_init(false)?;
        Ok(())
    }

    fn audio_unit(
        &mut self,
        unit: &MediaUnit,
        arrival_us: i64,
        samples: &mut Vec<(Kind, Sample)>,
    ) -> Result<(), CoreError> {
        let Some(a) = self.audio.as_mut() else {
            return Ok(());
        };
        let clock = i64::from(a.timeline.clock_rate());
        let pos = a.timeline.position(unit.ssrc, unit.timestamp, arrival_us) * 48_000 / clock;
        self.stats.timeline_resyncs = a.timeline.resyncs;
        a.first_mode.get_or_insert(a.mode);
        match a.mode {
            AudioMode::G711(law) => {
                let n = unit.payload.len() as i64;
                let dur = n * 48_000 / clock;
                // The first packet: every track starts at media time 0 (silence before a late
                // first packet), so players see one start and one duration for the file.
                let cursor = a.cursor.unwrap_or(0);
                if a.transcoder.is_none() {
                    a.transcoder = Some(G711ToOpus::new()?);
                }
                let Some(t) = a.transcoder.as_mut() else {
                    return Ok(());
                };
                if pos + dur <= cursor {
                    self.stats.late_audio += 1;
                    return Ok(());
                }
                let mut frames = Vec::new();
                let skip = if pos < cursor {
                    usize::try_from((cursor - pos) * clock / 48_000).unwrap_or(0)
                } else {
                    let gap = usize::try_from((pos - cursor) * clock / 48_000).unwrap_or(0);
                    if gap > 0 {
                        self.stats.gap_fill_ms += gap as u64 * 1000 / clock as u64;
                        frames.extend(t.push_silence(gap)?);
                    }
                    0
                };
                let payload = unit.payload.get(skip..).unwrap_or_default();
                frames.extend(t.push_g711(law, payload)?);
                a.cursor = Some(cursor.max(pos) + payload.len() as i64 * 48_000 / clock);
                for f in frames {
                    samples.push((Kind::Audio, opus_sample(a.frame_dts, f)));
                    a.frame_dts += FRAME_48K as i64;
                }
            }
            AudioMode::Opus => {
                // Leaving G.711: encode what the transcoder holds so nothing shifts.
                if let Some(mut t) = a.transcoder.take() {
                    if let Some(f) = t.flush()? {
                        samples.push((Kind::Audio, opus_sample(a.frame_dts, f)));
                        a.frame_dts += FRAME_48K as i64;
                    }
                    a.cursor = Some(a.frame_dts);
                }
                let Some(dur) = packet_samples_48k(&unit.payload) else {
                    self.stats.malformed += 1;
                    return Ok(());
                };
                let dur = i64::from(dur);
                let mut cursor = a.cursor.unwrap_or(0);
                if pos + dur <= cursor {
                    self.stats.late_audio += 1;
                    return Ok(());
                }
                let frame = FRAME_48K as i64;
                while cursor + frame <= pos {
                    samples.push((Kind::Audio, opus_sample(cursor, OPUS_SILENCE_20MS.to_vec())));
                    self.stats.gap_fill_ms += 20;
                    cursor += frame;
                }
                let dts = pos.max(cursor);
                samples.push((
                    Kind::Audio,
                    Sample {
                        dts: u64::try_from(dts).unwrap_or(0),
                        duration: u32::try_from(dur).unwrap_or(960),
                        data: unit.payload.to_vec(),
                        sync: true,
                    },
                ));
                a.cursor = Some(dts + dur);
                a.frame_dts = dts + dur;
            }
        }
        Ok(())
    }

    fn video_unit(&mut self, unit: &MediaUnit, arrival_us: i64, samples: &mut Vec<(Kind, Sample)>) {
        let Some(v) = self.video.as_mut() else {
            return;
        };
        if v.depack
            .push(unit.seq, unit.timestamp, unit.marker, &unit.payload)
            .is_err()
        {
            self.stats.malformed += 1;
        }
        while let Some(au) = v.depack.pull() {
            if au.damaged {
                // A picture with missing slices would show as corruption: drop it and
                // restart at the next keyframe.
                self.stats.video_damaged += 1;
                v.waiting_keyframe = true;
                continue;
            }
            let pos = v.timeline.position(unit.ssrc, au.timestamp, arrival_us);
            if v.waiting_keyframe {
                let params = match v.depack.parameter_sets() {
                    Some((s, p)) if au.keyframe => Some((s.clone(), p.clone())),
                    _ => None,
                };
                let Some((sps, pps)) = params else {
                    self.stats.video_waiting_keyframe += 1;
                    continue;
                };
                if v.config.is_none() {
                    match parse_sps(&sps) {
                        Some(info) => {
                            v.config = Some((sps.to_vec(), pps.to_vec(), info.width, info.height))
                        }
                        None => {
                            self.stats.malformed += 1;
                            self.stats.video_waiting_keyframe += 1;
                            continue;
                        }
                    }
                }
                v.waiting_keyframe = false;
            }
            if let Some((held_pos, held)) = v.held.take() {
                if pos <= held_pos {
                    // Decode order must be increasing (no B-frames over RTP here): keep the
                    // earlier unit, drop this one.
                    v.held = Some((held_pos, held));
                    self.stats.malformed += 1;
                    continue;
                }
                let d = u32::try_from(pos - held_pos).unwrap_or(u32::MAX);
                v.last_duration = d;
                samples.push((Kind::Video, video_sample(held_pos, d, &held)));
            }
            // Every track starts at media time 0: the first picture stands from there until
            // the second (a late video start shows the first frame, not an empty track that
            // players count twice in the file's duration).
            let pos = if std::mem::take(&mut v.first) { 0 } else { pos };
            v.held = Some((pos, au));
        }
    }

    fn sample(&mut self, kind: Kind, s: Sample) -> Result<(), CoreError> {
        let Some(w) = self.writer.as_mut() else {
            self.pending.push((kind, s));
            return Ok(());
        };
        let idx = match kind {
            Kind::Audio => self.audio_idx,
            Kind::Video => self.video_idx,
        };
        let Some(idx) = idx else {
            self.stats.late_track_samples += 1;
            return Ok(());
        };
        if kind == Kind::Video && s.sync && self.cfg.fragment_at_keyframes {
            // Not for every picture of intra-only video: at most one cut per 200 ms.
            let gap = self
                .video
                .as_ref()
                .map_or(18_000, |v| u64::from(v.timeline.clock_rate() / 5));
            if self.last_keyframe_cut.is_none_or(|k| s.dts >= k + gap) {
                self.last_keyframe_cut = Some(s.dts);
                if let Some(frag) = w.flush_fragment() {
                    self.out.push_back(Output::Fragment(frag));
                }
            }
        }
        match w.push(idx, s) {
            Ok(()) => {}
            Err(Fmp4Error::NonMonotonic { .. }) => self.stats.malformed += 1,
            Err(e) => return Err(e.into()),
        }
        let frag = match self.video_idx {
            Some(v) if self.cfg.fragment_at_keyframes => w.poll_fragment_on(v),
            _ => w.poll_fragment(),
        };
        if let Some(frag) = frag {
            self.out.push_back(Output::Fragment(frag));
        }
        Ok(())
    }

    fn maybe_init(&mut self, force: bool) -> Result<(), CoreError> {
        if self.writer.is_some() {
            return Ok(());
        }
        let audio_ready = self.pending.iter().any(|(k, _)| *k == Kind::Audio);
        let video_ready = self.pending.iter().any(|(k, _)| *k == Kind::Video);
        let all = (self.audio.is_none() || audio_ready) && (self.video.is_none() || video_ready);
        let waited = self.last_arrival_us
            >= i64::try_from(self.cfg.wait_for_tracks_ms * 1000).unwrap_or(i64::MAX);
        if !(audio_ready || video_ready) || !(all || waited || force) {
            return Ok(());
        }
        let mut tracks = Vec::new();
        let mut codecs = Vec::new();
        if let (true, Some(a)) = (audio_ready, &self.audio) {
            let (channels, pre_skip) = match (a.first_mode, &a.transcoder) {
                (Some(AudioMode::G711(_)), Some(t)) => (1, t.pre_skip()),
                (Some(AudioMode::G711(_)), None) => (1, 0),
                _ => (2, 0),
            };
            codecs.push(if matches!(a.first_mode, Some(AudioMode::G711(_))) {
                format!("opus (from {})", a.source_codec)
            } else {
                "opus".to_owned()
            });
            self.audio_idx = Some(tracks.len());
            tracks.push(TrackConfig {
                codec: Codec::Opus { channels, pre_skip },
                timescale: 48_000,
            });
        }
        if let (true, Some(v)) = (video_ready, &self.video) {
            if let Some((sps, pps, width, height)) = &v.config {
                codecs.push(format!("H264 {width}x{height}"));
                self.video_idx = Some(tracks.len());
                tracks.push(TrackConfig {
                    codec: Codec::H264 {
                        sps: sps.clone(),
                        pps: pps.clone(),
                        width: *width,
                        height: *height,
                    },
                    timescale: v.timeline.clock_rate(),
                });
            }
        }
        let writer = Fmp4Writer::new(tracks, self.cfg.fragment_ms)?;
        tracing::debug!(?codecs, "recording header written");
        self.codecs = codecs;
        self.out
            .push_back(Output::Init(writer.init_segment().to_vec()));
        self.writer = Some(writer);
        for (k, s) in std::mem::take(&mut self.pending) {
            self.sample(k, s)?;
        }
        Ok(())
    }

    /// Ends the recording: flushes held media and the last fragment, then the header
    /// patches. `now` (the stop time) pads transcoded audio with silence up to it, so a
    /// sender that went quiet before the end still yields the call's duration.
    pub fn finish(&mut self, now: Option<Instant>) -> Result<(), CoreError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut samples = Vec::new();
        if let Some(a) = self.audio.as_mut() {
            if let (Some(t), Some(cursor), Some(start), Some(now)) =
                (a.transcoder.as_mut(), a.cursor, self.start, now)
            {
                let now48 = i64::try_from(now.saturating_duration_since(start).as_micros())
                    .unwrap_or(0)
                    * 48
                    / 1000;
                let gap8k = (now48 - cursor) / 6;
                if gap8k > 0 {
                    self.stats.gap_fill_ms += gap8k as u64 / 8;
                    for f in t.push_silence(usize::try_from(gap8k).unwrap_or(0))? {
                        samples.push((Kind::Audio, opus_sample(a.frame_dts, f)));
                        a.frame_dts += FRAME_48K as i64;
                    }
                }
            }
            if let Some(t) = a.transcoder.as_mut() {
                if let Some(f) = t.flush()? {
                    samples.push((Kind::Audio, opus_sample(a.frame_dts, f)));
                    a.frame_dts += FRAME_48K as i64;
                }
            }
        }
        if let Some(v) = self.video.as_mut() {
            if let Some((pos, au)) = v.held.take() {
                samples.push((Kind::Video, video_sample(pos, v.last_duration, &au)));
            }
        }
        for (k, s) in samples {
            self.sample(k, s)?;
        }
        self.maybe_init(true)?;
        if let Some(w) = self.writer.as_mut() {
            if let Some(frag) = w.flush_fragment() {
                self.out.push_back(Output::Fragment(frag));
            }
            for p in w.finish_patches() {
                self.out.push_back(Output::Patch(p));
            }
        }
        Ok(())
    }
}

fn opus_sample(dts: i64, data: Vec<u8>) -> Sample {
    Sample {
        dts: u64::try_from(dts).unwrap_or(0),
        duration: FRAME_48K as u32,
        data,
        sync: true,
    }
}

fn video_sample(pos: i64, duration: u32, au: &AccessUnit) -> Sample {
    Sample {
        dts: u64::try_from(pos).unwrap_or(0),
        duration,
        data: au.to_avcc(),
        sync: au.keyframe,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn spec(kind: TrackKind, codec: &str, rate: u32) -> TrackSpec {
        TrackSpec {
            kind,
            ..TrackSpec::audio(codec, rate, 0)
        }
    }

    fn unit(track: TrackId, ssrc: u32, ts: u32, at: Instant, payload: &[u8]) -> MediaUnit {
        MediaUnit {
            track,
            payload_type: 0,
            seq: 0,
            timestamp: ts,
            marker: false,
            ssrc,
            payload: Bytes::copy_from_slice(payload),
            arrival: at,
        }
    }

    /// Appended bytes, and the sample count of every `trun` in them.
    fn drain(c: &mut RecorderCore) -> (usize, u32) {
        let (mut bytes, mut samples) = (0, 0);
        while let Some(o) = c.poll_output() {
            if let Some(b) = o.appended() {
                bytes += b.len();
                let mut i = 0;
                while let Some(w) = b.get(i..i + 4) {
                    if w == b"trun" {
                        samples += u32::from_be_bytes(b[i + 8..i + 12].try_into().unwrap());
                    }
                    i += 1;
                }
            }
        }
        (bytes, samples)
    }

    #[test]
    fn hold_with_restarted_timestamps_keeps_wall_clock_duration() {
        let mut c = RecorderCore::new(RecorderConfig::default());
        c.handle_track(0, &spec(TrackKind::Audio, "PCMU", 8000));
        let t0 = Instant::now();
        let pkt = [0xFFu8; 160];
        // 2 s of audio, 5 s of hold (nothing sent), then 2 s with timestamps restarted at 0
        // and a new SSRC, then a duplicate of the last packet.
        for k in 0..100u32 {
            let at = t0 + Duration::from_millis(u64::from(k) * 20);
            c.handle_media(&unit(0, 1, 50_000 + k * 160, at, &pkt))
                .unwrap();
        }
        for k in 0..100u32 {
            let at = t0 + Duration::from_millis(7000 + u64::from(k) * 20);
            c.handle_media(&unit(0, 2, k * 160, at, &pkt)).unwrap();
        }
        let at = t0 + Duration::from_millis(9000);
        c.handle_media(&unit(0, 2, 99 * 160, at, &pkt)).unwrap();
        c.finish(None).unwrap();
        assert_eq!(c.duration_ms(), 9000);
        assert_eq!(c.stats.late_audio, 1);
        assert_eq!(c.stats.timeline_resyncs, 1);
        assert_eq!(c.stats.gap_fill_ms, 5000);
        let (_, samples) = drain(&mut c);
        assert_eq!(samples, 450);
        assert_eq!(c.codecs(), ["opus (from PCMU)"]);
    }

    #[test]
    fn opus_passthrough_fills_gaps_with_silence_frames() {
        let mut c = RecorderCore::new(RecorderConfig::default());
        c.handle_track(0, &spec(TrackKind::Audio, "opus", 48000));
        let t0 = Instant::now();
        for k in (0..50u32).filter(|k| !(10..20).contains(k)) {
            let at = t0 + Duration::from_millis(u64::from(k) * 20);
            c.handle_media(&unit(0, 7, k * 960, at, &[0x08, 1, 2]))
                .unwrap();
        }
        c.finish(None).unwrap();
        assert_eq!(c.duration_ms(), 1000);
        assert_eq!(drain(&mut c).1, 50);
        assert_eq!(c.codecs(), ["opus"]);
    }

    #[test]
    fn waits_for_video_keyframe_then_gives_up_and_records_audio() {
        let mut c = RecorderCore::new(RecorderConfig::default());
        c.handle_track(0, &spec(TrackKind::Audio, "PCMA", 8000));
        c.handle_track(1, &spec(TrackKind::Video, "H264", 90000));
        c.handle_track(2, &spec(TrackKind::Video, "VP8", 90000));
        assert_eq!(c.stats.ignored_tracks, 1);
        let t0 = Instant::now();
        for k in 0..250u32 {
            let at = t0 + Duration::from_millis(u64::from(k) * 20);
            c.handle_media(&unit(0, 1, k * 160, at, &[0xD5; 160]))
                .unwrap();
            // P-slices only, never an IDR: video cannot start.
            let mut v = unit(1, 9, k * 3600, at, &[0x41, 0x9A, 0]);
            v.seq = k as u16;
            v.marker = true;
            c.handle_media(&v).unwrap();
            if k == 140 {
                // Nothing written before the 3 s wait is over.
                assert!(c.poll_output().is_none());
            }
        }
        assert!(c.stats.video_waiting_keyframe >= 249);
        c.finish(None).unwrap();
        assert_eq!(c.codecs(), ["opus (from PCMA)"]);
        assert_eq!(c.duration_ms(), 5000);
        drain(&mut c);
    }

    #[test]
    fn garbage_input_never_panics() {
        let mut c = RecorderCore::new(RecorderConfig::default());
        c.handle_track(0, &spec(TrackKind::Audio, "opus", 48000));
        c.handle_track(1, &spec(TrackKind::Video, "H264", 90000));
        let t0 = Instant::now();
        let mut x: u32 = 12345;
        for k in 0..2000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = (x >> 24) as usize % 40;
            let payload: Vec<u8> = (0..len).map(|i| (x >> (i % 24)) as u8).collect();
            let at = t0 + Duration::from_millis(u64::from(k));
            let mut u = unit((x & 1) as usize, x >> 30, x, at, &payload);
            u.seq = (x >> 8) as u16;
            u.marker = x & 4 != 0;
            c.handle_media(&u).unwrap();
            drain(&mut c);
        }
        c.finish(Some(t0)).unwrap();
        drain(&mut c);
    }

    /// (track id, tfdt base) of every track fragment in the appended bytes.
    fn fragment_starts(c: &mut RecorderCore) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut track = 0;
        while let Some(o) = c.poll_output() {
            let Some(b) = o.appended() else { continue };
            for i in 0..b.len().saturating_sub(16) {
                match &b[i..i + 4] {
                    b"tfhd" => track = u32::from_be_bytes(b[i + 8..i + 12].try_into().unwrap()),
                    b"tfdt" => out.push((
                        track,
                        u64::from_be_bytes(b[i + 8..i + 16].try_into().unwrap()),
                    )),
                    _ => {}
                }
            }
        }
        out
    }

    #[test]
    fn late_tracks_start_at_media_time_zero() {
        use crate::media::h264::SPS_320X240;
        let mut c = RecorderCore::new(RecorderConfig::default());
        c.handle_track(0, &spec(TrackKind::Audio, "PCMU", 8000));
        c.handle_track(1, &spec(TrackKind::Video, "H264", 90000));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Video from 0 s, its first keyframe at 0.5 s; audio from 1 s.
        let mut stap = vec![24u8];
        for nal in [
            SPS_320X240,
            &[0x68, 0xCE, 0x38, 0x80],
            &[0x65, 0x88, 0x84, 0x00],
        ] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        for k in 0..75u32 {
            let ms = u64::from(k) * 40;
            let payload: &[u8] = if k == 12 { &stap } else { &[0x41, 0x9A, 0] };
            let mut v = unit(1, 9, 1_000 + k * 3600, at(ms), payload);
            v.seq = k as u16;
            v.marker = true;
            c.handle_media(&v).unwrap();
            if ms >= 1000 && ms % 20 == 0 {
                for j in 0..2u32 {
                    let a = ms + u64::from(j) * 20;
                    let ts = u32::try_from(a - 1000).unwrap() * 8;
                    c.handle_media(&unit(0, 1, ts, at(a), &[0xFF; 160]))
                        .unwrap();
                }
            }
        }
        c.finish(Some(at(3000))).unwrap();
        assert_eq!(c.codecs(), ["opus (from PCMU)", "H264 320x240"]);
        assert_eq!(c.stats.video_waiting_keyframe, 12);
        assert_eq!(c.stats.gap_fill_ms, 1000);
        let starts = fragment_starts(&mut c);
        let first = |track| starts.iter().find(|(t, _)| *t == track).map(|s| s.1);
        assert_eq!((first(1), first(2)), (Some(0), Some(0)), "{starts:?}");
        // Both tracks end at the stop time (3 s): audio padded, the last picture's 40 ms.
        assert_eq!(c.duration_ms(), 3000);
    }
}
