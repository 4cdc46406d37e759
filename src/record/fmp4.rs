//! A sans-IO fragmented-MP4 (ISO BMFF) writer: an init segment (`ftyp` + `moov` with empty
//! sample tables and `mvex`/`trex`), then self-contained `moof`+`mdat` fragments.
//!
//! Owns box layout only: no files, no clocks, no codecs. The caller appends the bytes it gets
//! in order and, on a clean finish, applies [`Fmp4Writer::finish_patches`] (fixed-size
//! duration fields in `mvhd` and `mehd`) at the given offsets.
//!
//! Drive contract:
//! 1. [`Fmp4Writer::new`] with the tracks; write [`Fmp4Writer::init_segment`] first.
//! 2. [`Fmp4Writer::push`] samples; per track their `dts` must not go backwards (a sample that
//!    does is rejected with [`Fmp4Error::NonMonotonic`], nothing else changes). A gap between
//!    samples is closed by lengthening the previous sample.
//! 3. After each push, [`Fmp4Writer::poll_fragment`] returns a fragment once about
//!    `fragment_duration` is buffered; [`Fmp4Writer::flush_fragment`] returns whatever is
//!    buffered (use it at the end).
//!
//! Crash safety comes from the layout: every fragment carries its own `tfdt`, so a file cut
//! after any whole fragment (or with a fragment missing) still plays up to that point.

use thiserror::Error;

/// Movie timescale (mvhd, mehd, tkhd durations): milliseconds.
pub const MOVIE_TIMESCALE: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Codec {
    /// Opus in MP4 (`Opus` sample entry with `dOps`), always 48 kHz.
    Opus { channels: u8, pre_skip: u16 },
    /// H.264 (`avc1` with `avcC`); samples are length-prefixed (4 bytes) NAL units.
    H264 {
        sps: Vec<u8>,
        pps: Vec<u8>,
        width: u16,
        height: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackConfig {
    pub codec: Codec,
    /// Units per second of this track's `dts`/durations (48000 for Opus, 90000 for H264).
    pub timescale: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Decode time in the track's timescale, from the start of the recording.
    pub dts: u64,
    pub duration: u32,
    pub data: Vec<u8>,
    /// A sync sample (always true for audio; IDR access units for video).
    pub sync: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Fmp4Error {
    #[error("no tracks")]
    NoTracks,
    #[error("track {0} does not exist")]
    NoSuchTrack(usize),
    #[error("track {track}: sample dts {dts} is before the previous sample's dts {prev}")]
    NonMonotonic { track: usize, dts: u64, prev: u64 },
    #[error("H264 SPS too short ({0} bytes) for avcC")]
    BadSps(usize),
    #[error("parameter set of {0} bytes does not fit avcC")]
    ParameterSetTooLong(usize),
}

/// One `moof`+`mdat` and where it sits on the media timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub bytes: Vec<u8>,
    /// Earliest sample start over its tracks, microseconds of media time.
    pub start_us: u64,
    /// Latest sample end over its tracks, microseconds of media time.
    pub end_us: u64,
    /// Decodable alone: no video track in it, or its video starts with a sync sample
    /// (an HLS segment or part may start here).
    pub independent: bool,
}

/// Bytes to write at `offset` on a clean finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

#[derive(Debug)]
struct TrackState {
    cfg: TrackConfig,
    queued: Vec<Sample>,
    /// End (dts + duration) of the last sample handed out or queued.
    end: Option<u64>,
    last_dts: Option<u64>,
}

#[derive(Debug)]
pub struct Fmp4Writer {
    tracks: Vec<TrackState>,
    fragment_duration_ms: u64,
    sequence: u32,
    mvhd_duration_offset: u64,
    mehd_duration_offset: u64,
    init: Vec<u8>,
}

impl Fmp4Writer {
    pub fn new(tracks: Vec<TrackConfig>, fragment_duration_ms: u64) -> Result<Self, Fmp4Error> {
        if tracks.is_empty() {
            return Err(Fmp4Error::NoTracks);
        }
        let (init, mvhd_off, mehd_off) = build_init(&tracks)?;
        Ok(Self {
            tracks: tracks
                .into_iter()
                .map(|cfg| TrackState {
                    cfg,
                    queued: Vec::new(),
                    end: None,
                    last_dts: None,
                })
                .collect(),
            fragment_duration_ms: fragment_duration_ms.max(1),
            sequence: 0,
            mvhd_duration_offset: mvhd_off,
            mehd_duration_offset: mehd_off,
            init,
        })
    }

    /// `ftyp` + `moov`: the first bytes of the file.
    pub fn init_segment(&self) -> &[u8] {
        &self.init
    }

    pub fn push(&mut self, track: usize, mut sample: Sample) -> Result<(), Fmp4Error> {
        let t = self
            .tracks
            .get_mut(track)
            .ok_or(Fmp4Error::NoSuchTrack(track))?;
        if let Some(prev) = t.last_dts {
            if sample.dts <= prev {
                return Err(Fmp4Error::NonMonotonic {
                    track,
                    dts: sample.dts,
                    prev,
                });
            }
        }
        // Close gaps and overlaps with the previous queued sample (its duration is still
        // ours to change); across fragments the next tfdt carries the gap.
        if let Some(last) = t.queued.last_mut() {
            let d = sample.dts - last.dts;
            last.duration = u32::try_from(d).unwrap_or(u32::MAX);
        }
        sample.duration = sample.duration.max(1);
        t.last_dts = Some(sample.dts);
        t.end = Some(sample.dts + u64::from(sample.duration));
        t.queued.push(sample);
        Ok(())
    }

    fn buffered_ms(t: &TrackState) -> u64 {
        match (t.queued.first(), t.queued.last()) {
            (Some(a), Some(b)) => {
                (b.dts + u64::from(b.duration) - a.dts) * 1000 / u64::from(t.cfg.timescale.max(1))
            }
            _ => 0,
        }
    }

    /// Media buffered for the next fragment, milliseconds (the longest track).
    pub fn buffered(&self) -> u64 {
        self.tracks.iter().map(Self::buffered_ms).max().unwrap_or(0)
    }

    /// A fragment once some track has `fragment_duration` buffered.
    pub fn poll_fragment(&mut self) -> Option<Fragment> {
        if self
            .tracks
            .iter()
            .any(|t| Self::buffered_ms(t) >= self.fragment_duration_ms)
        {
            self.flush_fragment()
        } else {
            None
        }
    }

    /// A fragment once `track` has `fragment_duration` buffered (or any track three times
    /// that, should `track` stall): with video as `track`, fragments follow the pictures,
    /// so one cut before each keyframe gives fragments that start on keyframes.
    pub fn poll_fragment_on(&mut self, track: usize) -> Option<Fragment> {
        let due = self
            .tracks
            .get(track)
            .is_some_and(|t| Self::buffered_ms(t) >= self.fragment_duration_ms)
            || self.buffered() >= self.fragment_duration_ms * 3;
        if due {
            self.flush_fragment()
        } else {
            None
        }
    }

    /// Everything buffered as one fragment; `None` if nothing is buffered.
    pub fn flush_fragment(&mut self) -> Option<Fragment> {
        if self.tracks.iter().all(|t| t.queued.is_empty()) {
            return None;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let us = |t: &TrackState, units: u64| {
            u64::try_from(u128::from(units) * 1_000_000 / u128::from(t.cfg.timescale.max(1)))
                .unwrap_or(u64::MAX)
        };
        let mut start_us = u64::MAX;
        let mut end_us = 0;
        let mut independent = true;
        for t in &self.tracks {
            if let (Some(first), Some(last)) = (t.queued.first(), t.queued.last()) {
                start_us = start_us.min(us(t, first.dts));
                end_us = end_us.max(us(t, last.dts + u64::from(last.duration)));
            }
            // With video, the fragment must open with a picture that decodes alone.
            if matches!(t.cfg.codec, Codec::H264 { .. })
                && !t.queued.first().is_some_and(|s| s.sync)
            {
                independent = false;
            }
        }
        let taken: Vec<(u32, Vec<Sample>, bool)> = self
            .tracks
            .iter_mut()
            .enumerate()
            .filter(|(_, t)| !t.queued.is_empty())
            .map(|(i, t)| {
                let video = matches!(t.cfg.codec, Codec::H264 { .. });
                (track_id(i), std::mem::take(&mut t.queued), video)
            })
            .collect();
        Some(Fragment {
            bytes: build_fragment(self.sequence, &taken),
            start_us,
            end_us,
            independent,
        })
    }

    /// Media duration in milliseconds (the longest track).
    pub fn duration_ms(&self) -> u64 {
        self.tracks
            .iter()
            .filter_map(|t| t.end.map(|e| e * 1000 / u64::from(t.cfg.timescale.max(1))))
            .max()
            .unwrap_or(0)
    }

    /// The duration fields to overwrite on a clean finish (after the last fragment).
    pub fn finish_patches(&self) -> Vec<Patch> {
        let ms = self.duration_ms();
        vec![
            Patch {
                offset: self.mvhd_duration_offset,
                bytes: u32::try_from(ms).unwrap_or(u32::MAX).to_be_bytes().to_vec(),
            },
            Patch {
                offset: self.mehd_duration_offset,
                bytes: ms.to_be_bytes().to_vec(),
            },
        ]
    }
}

fn track_id(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

/// Appends a box: size placeholder, type, body written by `f`, then the size.
fn bx(out: &mut Vec<u8>, kind: &[u8; 4], f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(kind);
    f(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// A full box: version and 24-bit flags before the body.
fn fbx(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, f: impl FnOnce(&mut Vec<u8>)) {
    bx(out, kind, |o| {
        o.push(version);
        o.extend_from_slice(&flags.to_be_bytes()[1..]);
        f(o);
    });
}

fn u16be(o: &mut Vec<u8>, v: u16) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u32be(o: &mut Vec<u8>, v: u32) {
    o.extend_from_slice(&v.to_be_bytes());
}
fn u64be(o: &mut Vec<u8>, v: u64) {
    o.extend_from_slice(&v.to_be_bytes());
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn build_init(tracks: &[TrackConfig]) -> Result<(Vec<u8>, u64, u64), Fmp4Error> {
    let has_video = tracks.iter().any(|t| matches!(t.codec, Codec::H264 { .. }));
    let mut out = Vec::with_capacity(1024);
    bx(&mut out, b"ftyp", |o| {
        o.extend_from_slice(b"iso6");
        u32be(o, 0);
        o.extend_from_slice(b"iso6isommp41");
        if has_video {
            o.extend_from_slice(b"avc1");
        }
        o.extend_from_slice(b"Opus");
    });
    let mut trak_err = None;
    let mut mvhd_off = 0u64;
    let mut mehd_off = 0u64;
    bx(&mut out, b"moov", |o| {
        fbx(o, b"mvhd", 0, 0, |o| {
            u32be(o, 0); // creation_time
            u32be(o, 0); // modification_time
            u32be(o, MOVIE_TIMESCALE);
            mvhd_off = o.len() as u64;
            u32be(o, 0); // duration: patched on finish
            u32be(o, 0x0001_0000); // rate 1.0
            u16be(o, 0x0100); // volume 1.0
            o.extend_from_slice(&[0; 10]);
            MATRIX.iter().for_each(|m| u32be(o, *m));
            o.extend_from_slice(&[0; 24]);
            u32be(o, track_id(tracks.len()));
        });
        for (i, t) in tracks.iter().enumerate() {
            if let Err(e) = trak(o, track_id(i), t) {
                trak_err = Some(e);
            }
        }
        bx(o, b"mvex", |o| {
            fbx(o, b"mehd", 1, 0, |o| {
                mehd_off = o.len() as u64;
                u64be(o, 0); // fragment_duration: patched on finish
            });
            for i in 0..tracks.len() {
                fbx(o, b"trex", 0, 0, |o| {
                    u32be(o, track_id(i));
                    u32be(o, 1); // sample description index
                    u32be(o, 0);
                    u32be(o, 0);
                    u32be(o, 0);
                });
            }
        });
    });
    match trak_err {
        Some(e) => Err(e),
        None => Ok((out, mvhd_off, mehd_off)),
    }
}

fn trak(o: &mut Vec<u8>, id: u32, t: &TrackConfig) -> Result<(), Fmp4Error> {
    let (video, width, height) = match &t.codec {
        Codec::H264 { width, height, .. } => (true, *width, *height),
        Codec::Opus { .. } => (false, 0, 0),
    };
    let mut stsd = Vec::new();
    sample_entry(&mut stsd, &t.codec)?;
    bx(o, b"trak", |o| {
        fbx(o, b"tkhd", 0, 3, |o| {
            u32be(o, 0);
            u32be(o, 0);
            u32be(o, id);
            u32be(o, 0);
            u32be(o, 0); // duration
            o.extend_from_slice(&[0; 8]);
            u16be(o, 0); // layer
            u16be(o, 0); // alternate group
            u16be(o, if video { 0 } else { 0x0100 });
            u16be(o, 0);
            MATRIX.iter().for_each(|m| u32be(o, *m));
            u32be(o, u32::from(width) << 16);
            u32be(o, u32::from(height) << 16);
        });
        bx(o, b"mdia", |o| {
            fbx(o, b"mdhd", 0, 0, |o| {
                u32be(o, 0);
                u32be(o, 0);
                u32be(o, t.timescale);
                u32be(o, 0);
                u16be(o, 0x55C4); // "und"
                u16be(o, 0);
            });
            fbx(o, b"hdlr", 0, 0, |o| {
                u32be(o, 0);
                o.extend_from_slice(if video { b"vide" } else { b"soun" });
                o.extend_from_slice(&[0; 12]);
                o.extend_from_slice(if video {
                    b"VideoHandler\0".as_slice()
                } else {
                    b"SoundHandler\0".as_slice()
                });
            });
            bx(o, b"minf", |o| {
                if video {
                    fbx(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
                } else {
                    fbx(o, b"smhd", 0, 0, |o| o.extend_from_slice(&[0; 4]));
                }
                bx(o, b"dinf", |o| {
                    fbx(o, b"dref", 0, 0, |o| {
                        u32be(o, 1);
                        fbx(o, b"url ", 0, 1, |_| {});
                    });
                });
                bx(o, b"stbl", |o| {
                    fbx(o, b"stsd", 0, 0, |o| {
                        u32be(o, 1);
                        o.extend_from_slice(&stsd);
                    });
                    fbx(o, b"stts", 0, 0, |o| u32be(o, 0));
                    fbx(o, b"stsc", 0, 0, |o| u32be(o, 0));
                    fbx(o, b"stsz", 0, 0, |o| {
                        u32be(o, 0);
                        u32be(o, 0);
                    });
                    fbx(o, b"stco", 0, 0, |o| u32be(o, 0));
                });
            });
        });
    });
    Ok(())
}

fn sample_entry(o: &mut Vec<u8>, codec: &Codec) -> Result<(), Fmp4Error> {
    match codec {
        Codec::Opus { channels, pre_skip } => {
            bx(o, b"Opus", |o| {
                o.extend_from_slice(&[0; 6]);
                u16be(o, 1); // data reference index
                o.extend_from_slice(&[0; 8]);
                u16be(o, u16::from(*channels));
                u16be(o, 16);
                u16be(o, 0);
                u16be(o, 0);
                u32be(o, 48000 << 16);
                bx(o, b"dOps", |o| {
                    o.push(0); // version
                    o.push(*channels);
                    u16be(o, *pre_skip);
                    u32be(o, 48000); // input sample rate
                    u16be(o, 0); // output gain
                    o.push(0); // channel mapping family 0 (mono/stereo)
                });
            });
        }
        Codec::H264 {
            sps,
            pps,
            width,
            height,
        } => {
            if sps.len() < 4 {
                return Err(Fmp4Error::BadSps(sps.len()));
            }
            let sps_len =
                u16::try_from(sps.len()).map_err(|_| Fmp4Error::ParameterSetTooLong(sps.len()))?;
            let pps_len =
                u16::try_from(pps.len()).map_err(|_| Fmp4Error::ParameterSetTooLong(pps.len()))?;
            bx(o, b"avc1", |o| {
                o.extend_from_slice(&[0; 6]);
                u16be(o, 1);
                o.extend_from_slice(&[0; 16]);
                u16be(o, *width);
                u16be(o, *height);
                u32be(o, 0x0048_0000);
                u32be(o, 0x0048_0000);
                u32be(o, 0);
                u16be(o, 1); // frame count
                o.extend_from_slice(&[0; 32]); // compressor name
                u16be(o, 0x0018);
                u16be(o, 0xFFFF);
                bx(o, b"avcC", |o| {
                    o.push(1);
                    o.extend_from_slice(&sps[1..4]); // profile, compatibility, level
                    o.push(0xFF); // 4-byte NAL lengths
                    o.push(0xE1); // one SPS
                    u16be(o, sps_len);
                    o.extend_from_slice(sps);
                    o.push(1); // one PPS
                    u16be(o, pps_len);
                    o.extend_from_slice(pps);
                });
            });
        }
    }
    Ok(())
}

/// Sample flags (ISO 14496-12 8.8.3.1): sync samples depend on nothing; others are
/// non-sync and depend on earlier samples.
const FLAGS_SYNC: u32 = 0x0200_0000;
const FLAGS_NON_SYNC: u32 = 0x0101_0000;

fn build_fragment(sequence: u32, tracks: &[(u32, Vec<Sample>, bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset_slots = Vec::new();
    bx(&mut out, b"moof", |o| {
        fbx(o, b"mfhd", 0, 0, |o| u32be(o, sequence));
        for (id, samples, _video) in tracks {
            bx(o, b"traf", |o| {
                // default-base-is-moof: data offsets count from this moof's first byte.
                fbx(o, b"tfhd", 0, 0x02_0000, |o| u32be(o, *id));
                let base = samples.first().map(|s| s.dts).unwrap_or(0);
                fbx(o, b"tfdt", 1, 0, |o| u64be(o, base));
                // data-offset, duration, size, flags present per sample.
                fbx(o, b"trun", 0, 0x0001 | 0x0100 | 0x0200 | 0x0400, |o| {
                    u32be(o, u32::try_from(samples.len()).unwrap_or(u32::MAX));
                    offset_slots.push(o.len());
                    u32be(o, 0);
                    for s in samples {
                        u32be(o, s.duration);
                        u32be(o, u32::try_from(s.data.len()).unwrap_or(u32::MAX));
                        u32be(o, if s.sync { FLAGS_SYNC } else { FLAGS_NON_SYNC });
                    }
                });
            });
        }
    });
    let moof_len = out.len();
    let mut data_off = moof_len + 8;
    for ((_, samples, _), slot) in tracks.iter().zip(&offset_slots) {
        let v = u32::try_from(data_off).unwrap_or(u32::MAX);
        out[*slot..*slot + 4].copy_from_slice(&v.to_be_bytes());
        data_off += samples.iter().map(|s| s.data.len()).sum::<usize>();
    }
    bx(&mut out, b"mdat", |o| {
        for (_, samples, _) in tracks {
            for s in samples {
                o.extend_from_slice(&s.data);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opus() -> TrackConfig {
        TrackConfig {
            codec: Codec::Opus {
                channels: 1,
                pre_skip: 312,
            },
            timescale: 48000,
        }
    }

    fn sample(dts: u64) -> Sample {
        Sample {
            dts,
            duration: 960,
            data: vec![0xF8, 0xFF, 0xFE],
            sync: true,
        }
    }

    #[test]
    fn init_has_boxes_and_patch_offsets_point_at_zeroes() {
        let w = Fmp4Writer::new(vec![opus()], 1000).unwrap();
        let init = w.init_segment();
        assert_eq!(&init[4..8], b"ftyp");
        for needle in [
            b"moov", b"mvhd", b"trak", b"dOps", b"mvex", b"trex", b"mehd",
        ] {
            assert!(init.windows(4).any(|x| x == needle), "{needle:?}");
        }
        for p in w.finish_patches() {
            let o = p.offset as usize;
            assert!(init[o..o + p.bytes.len()].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn fragments_every_second_and_offsets_hit_mdat() {
        let mut w = Fmp4Writer::new(vec![opus()], 1000).unwrap();
        let mut frags = Vec::new();
        for i in 0..120u64 {
            w.push(0, sample(i * 960)).unwrap();
            frags.extend(w.poll_fragment());
        }
        assert_eq!(frags.len(), 2);
        assert_eq!((frags[0].start_us, frags[0].end_us), (0, 1_000_000));
        assert_eq!((frags[1].start_us, frags[1].end_us), (1_000_000, 2_000_000));
        assert!(frags.iter().all(|f| f.independent));
        let f = &frags[0].bytes;
        let moof_len = u32::from_be_bytes(f[0..4].try_into().unwrap()) as usize;
        assert_eq!(&f[moof_len + 4..moof_len + 8], b"mdat");
        assert_eq!(f.len(), moof_len + 8 + 50 * 3);
        assert!(w.flush_fragment().is_some());
        assert!(w.flush_fragment().is_none());
        assert_eq!(w.duration_ms(), 2400);
    }

    #[test]
    fn rejects_backwards_and_unknown_track() {
        let mut w = Fmp4Writer::new(vec![opus()], 1000).unwrap();
        w.push(0, sample(960)).unwrap();
        assert!(matches!(
            w.push(0, sample(960)),
            Err(Fmp4Error::NonMonotonic { .. })
        ));
        assert_eq!(w.push(3, sample(0)), Err(Fmp4Error::NoSuchTrack(3)));
        assert!(Fmp4Writer::new(vec![], 1000).is_err());
    }
}
