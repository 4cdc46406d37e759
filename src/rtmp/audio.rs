//! The audio side of a push: RTP audio payloads in, FLV audio tag bodies with timeline
//! timestamps out.
//!
//! Two policies, chosen by `rtmp_audio_codec`:
//! - `aac` (default): G.711 decoded by table, resampled to `rtmp_aac_sample_rate`, encoded
//!   AAC-LC with syom. Gaps up to [`FILL_GAP_MS`] (lost packets, DTX) are filled with silence so
//!   the AAC timeline stays continuous; longer gaps (a hold) restart the encoder at the new
//!   position; overlapping packets (duplicates) are trimmed.
//! - `pcmu`, `pcma`, `copy`: G.711 as FLV sound formats 8/7, transcoded μ-law ⇄ A-law by table
//!   when the call's codec is the other one (`copy`: as received).
//!
//! Opus calls are decoded with libopus (48 kHz mono) on the `aac` policy; FLV has no Opus
//! sound format, so the G.711 policies refuse them.
//!
//! Pure: timestamps are inputs; no I/O.

use bytes::Bytes;
use thiserror::Error;

use super::flv;
use crate::media::g711;
use crate::media::resample::Resampler;

/// Gaps up to this long are filled with silence; longer ones restart the AAC timeline.
pub const FILL_GAP_MS: i64 = 1000;
/// Packets that start this far before the expected position are dropped as duplicates.
const OVERLAP_DROP_MS: i64 = 200;
const G711_RATE: i64 = 8000;
const OPUS_RATE: i64 = 48000;
/// The largest Opus frame: 120 ms at 48 kHz.
const OPUS_MAX_SAMPLES: usize = 5760;

/// What the AAC path decodes.
enum AudioIn {
    Ulaw,
    Alaw,
    Opus(Box<opus::Decoder>),
}

impl AudioIn {
    fn rate(&self) -> i64 {
        match self {
            AudioIn::Ulaw | AudioIn::Alaw => G711_RATE,
            AudioIn::Opus(_) => OPUS_RATE,
        }
    }
}

/// What the push sends as audio (`rtmp_audio_codec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodecPolicy {
    Aac { sample_rate: u32, bitrate: u32 },
    Pcmu,
    Pcma,
    Copy,
}

impl AudioCodecPolicy {
    /// Parses `rtmp_audio_codec`.
    pub fn parse(codec: &str, sample_rate: u32, bitrate: u32) -> Option<Self> {
        match codec.trim().to_ascii_lowercase().as_str() {
            "aac" => Some(Self::Aac {
                sample_rate,
                bitrate,
            }),
            "pcmu" => Some(Self::Pcmu),
            "pcma" => Some(Self::Pcma),
            "copy" => Some(Self::Copy),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum AudioError {
    #[error("{codec} audio cannot be pushed ({why})")]
    Unsupported { codec: String, why: &'static str },
    #[error("AAC encoder: {0}")]
    Encoder(String),
}

/// One FLV audio tag body and its timeline position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioTag {
    pub ms: i64,
    pub body: Bytes,
}

/// What onMetaData says about the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    pub codec_id: u32,
    pub sample_rate: u32,
    pub bitrate_kbps: Option<u32>,
}

enum Kind {
    Aac(Box<AacPath>),
    G711 { in_alaw: bool, out_alaw: bool },
}

/// One track's audio conversion.
pub struct AudioPath {
    kind: Kind,
}

impl std::fmt::Debug for AudioPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioPath")
            .field("format", &self.format())
            .finish()
    }
}

struct AacPath {
    enc: syom::Encoder,
    resampler: Resampler,
    input: AudioIn,
    in_rate: i64,
    opus_buf: Vec<f32>,
    out_rate: u32,
    bitrate: u32,
    /// Timeline position of input sample 0 since the last restart.
    anchor_ms: Option<i64>,
    in_samples: i64,
    out_frames: i64,
    pcm: Vec<f32>,
    resampled: Vec<f32>,
    /// Encoder restarts after long gaps.
    pub restarts: u64,
}

impl AudioPath {
    /// A path for a track with `codec` ("PCMU", "PCMA", "opus", ...).
    pub fn new(policy: AudioCodecPolicy, codec: &str) -> Result<AudioPath, AudioError> {
        let opus = codec.eq_ignore_ascii_case("opus");
        let in_alaw = match codec.to_ascii_uppercase().as_str() {
            "PCMU" => false,
            "PCMA" => true,
            "OPUS" if matches!(policy, AudioCodecPolicy::Aac { .. }) => false,
            "OPUS" => {
                return Err(AudioError::Unsupported {
                    codec: codec.into(),
                    why: "FLV carries no Opus; use rtmp_audio_codec=aac",
                })
            }
            _ => {
                return Err(AudioError::Unsupported {
                    codec: codec.into(),
                    why: "only PCMU and PCMA are converted",
                })
            }
        };
        let kind = match policy {
            AudioCodecPolicy::Aac {
                sample_rate,
                bitrate,
            } => {
                let opts = syom::EncodeOptions::raw().with_bitrate_bps(bitrate);
                let enc = syom::Encoder::new(sample_rate, 1, &opts)
                    .map_err(|e| AudioError::Encoder(e.to_string()))?;
                let input = if opus {
                    let dec = opus::Decoder::new(48000, opus::Channels::Mono)
                        .map_err(|e| AudioError::Encoder(format!("Opus decoder: {e}")))?;
                    AudioIn::Opus(Box::new(dec))
                } else if in_alaw {
                    AudioIn::Alaw
                } else {
                    AudioIn::Ulaw
                };
                let in_rate = input.rate();
                let resampler = Resampler::new(in_rate as u32, sample_rate)
                    .ok_or_else(|| AudioError::Encoder(format!("bad sample rate {sample_rate}")))?;
                Kind::Aac(Box::new(AacPath {
                    enc,
                    resampler,
                    input,
                    in_rate,
                    opus_buf: Vec::new(),
                    out_rate: sample_rate,
                    bitrate,
                    anchor_ms: None,
                    in_samples: 0,
                    out_frames: 0,
                    pcm: Vec::new(),
                    resampled: Vec::new(),
                    restarts: 0,
                }))
            }
            AudioCodecPolicy::Pcmu => Kind::G711 {
                in_alaw,
                out_alaw: false,
            },
            AudioCodecPolicy::Pcma => Kind::G711 {
                in_alaw,
                out_alaw: true,
            },
            AudioCodecPolicy::Copy => Kind::G711 {
                in_alaw,
                out_alaw: in_alaw,
            },
        };
        Ok(AudioPath { kind })
    }

    pub fn format(&self) -> AudioFormat {
        match &self.kind {
            Kind::Aac(a) => AudioFormat {
                codec_id: flv::AUDIO_CODEC_AAC,
                sample_rate: a.out_rate,
                bitrate_kbps: Some(a.bitrate / 1000),
            },
            Kind::G711 { out_alaw, .. } => AudioFormat {
                codec_id: if *out_alaw {
                    flv::AUDIO_CODEC_PCMA
                } else {
                    flv::AUDIO_CODEC_PCMU
                },
                sample_rate: 8000,
                bitrate_kbps: Some(64),
            },
        }
    }

    /// The AAC sequence header every (re)connection must send before the first frame.
    pub fn sequence_header(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Aac(a) => Some(flv::aac_sequence_header(a.enc.asc())),
            Kind::G711 { .. } => None,
        }
    }

    /// Encoder restarts after long gaps (holds).
    pub fn restarts(&self) -> u64 {
        match &self.kind {
            Kind::Aac(a) => a.restarts,
            Kind::G711 { .. } => 0,
        }
    }

    /// Converts one RTP payload that starts at timeline position `ms`; appends finished tags.
    pub fn push(
        &mut self,
        ms: i64,
        payload: &[u8],
        out: &mut Vec<AudioTag>,
    ) -> Result<(), AudioError> {
        match &mut self.kind {
            Kind::G711 { in_alaw, out_alaw } => {
                if payload.is_empty() {
                    return Ok(());
                }
                let body = if in_alaw == out_alaw {
                    flv::g711_frame(*out_alaw, payload)
                } else {
                    let conv: Vec<u8> = payload
                        .iter()
                        .map(|&c| {
                            if *in_alaw {
                                g711::linear_to_ulaw(g711::alaw_to_linear(c))
                            } else {
                                g711::linear_to_alaw(g711::ulaw_to_linear(c))
                            }
                        })
                        .collect();
                    flv::g711_frame(*out_alaw, &conv)
                };
                out.push(AudioTag { ms, body });
                Ok(())
            }
            Kind::Aac(a) => a.push(ms, payload, out),
        }
    }
}

impl AacPath {
    fn push(&mut self, ms: i64, payload: &[u8], out: &mut Vec<AudioTag>) -> Result<(), AudioError> {
        let mut skip = 0usize;
        match self.anchor_ms {
            None => self.restart(ms)?,
            Some(anchor) => {
                let expected = anchor + self.in_samples * 1000 / self.in_rate;
                let diff = ms - expected;
                if !(-OVERLAP_DROP_MS..=FILL_GAP_MS).contains(&diff) {
                    self.restarts += 1;
                    self.restart(ms)?;
                } else if diff > 0 {
                    // Lost packets or DTX: silence keeps the timeline continuous.
                    self.pcm.clear();
                    self.pcm.resize((diff * self.in_rate / 1000) as usize, 0.0);
                    self.encode(out)?;
                } else if diff < 0 {
                    skip = ((-diff) * self.in_rate / 1000) as usize;
                }
            }
        }
        self.pcm.clear();
        match &mut self.input {
            AudioIn::Ulaw | AudioIn::Alaw => {
                if skip >= payload.len() {
                    return Ok(());
                }
                let alaw = matches!(self.input, AudioIn::Alaw);
                self.pcm.extend(payload[skip..].iter().map(|&c| {
                    let s = if alaw {
                        g711::alaw_to_linear(c)
                    } else {
                        g711::ulaw_to_linear(c)
                    };
                    f32::from(s) / 32768.0
                }));
            }
            AudioIn::Opus(dec) => {
                self.opus_buf.resize(OPUS_MAX_SAMPLES, 0.0);
                // A corrupt packet is dropped (counted by the caller as an error); the gap
                // is filled with silence by the timeline when the next one arrives.
                let n = dec
                    .decode_float(payload, &mut self.opus_buf, false)
                    .map_err(|e| AudioError::Encoder(format!("Opus decode: {e}")))?;
                let decoded = self.opus_buf.get(..n).unwrap_or(&[]);
                if skip >= decoded.len() {
                    return Ok(());
                }
                self.pcm.extend_from_slice(&decoded[skip..]);
            }
        }
        self.encode(out)
    }

    /// Starts a new AAC timeline at `ms` (first packet, or after a long gap).
    fn restart(&mut self, ms: i64) -> Result<(), AudioError> {
        if self.anchor_ms.is_some() {
            self.enc
                .reset()
                .map_err(|e| AudioError::Encoder(e.to_string()))?;
            self.resampler.reset();
        }
        self.anchor_ms = Some(ms);
        self.in_samples = 0;
        self.out_frames = 0;
        Ok(())
    }

    /// Resamples and encodes `self.pcm` (input-rate samples at the expected position).
    fn encode(&mut self, out: &mut Vec<AudioTag>) -> Result<(), AudioError> {
        self.in_samples += self.pcm.len() as i64;
        self.resampled.clear();
        self.resampler.process(&self.pcm, &mut self.resampled);
        for s in &mut self.resampled {
            // The FIR can overshoot full scale; syom refuses |x| > 1.
            *s = s.clamp(-1.0, 1.0);
        }
        let anchor = self.anchor_ms.unwrap_or(0);
        let rate = i64::from(self.out_rate);
        let frames = &mut self.out_frames;
        let res = self.enc.feed(&[&self.resampled], |f| {
            let ms = anchor + *frames * 1024 * 1000 / rate;
            *frames += 1;
            out.push(AudioTag {
                ms,
                body: flv::aac_frame(f.payload),
            });
            Ok(())
        });
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                // A failed encoder refuses further input: start a fresh one next time.
                let _ = self.enc.reset();
                Err(AudioError::Encoder(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulaw_tone(n: usize, start: usize) -> Vec<u8> {
        (start..start + n)
            .map(|i| {
                let s = (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 8000.0).sin() * 12000.0;
                g711::linear_to_ulaw(s as i16)
            })
            .collect()
    }

    fn aac(rate: u32) -> AudioPath {
        AudioPath::new(
            AudioCodecPolicy::Aac {
                sample_rate: rate,
                bitrate: 64_000,
            },
            "PCMU",
        )
        .unwrap()
    }

    #[test]
    fn pcmu_becomes_aac_frames_on_a_continuous_timeline() {
        let mut p = aac(48_000);
        let hdr = p.sequence_header().unwrap();
        // AAC-LC (2), 48 kHz (index 3), mono: 0x11 0x88.
        assert_eq!(&hdr[..], &[0xAF, 0, 0x11, 0x88]);
        let mut out = Vec::new();
        for i in 0..100 {
            p.push(1000 + i * 20, &ulaw_tone(160, i as usize * 160), &mut out)
                .unwrap();
        }
        // 2 s at 48 kHz = 93.75 frames of 1024; the resampler and the encoder hold a little.
        assert!((88..=94).contains(&out.len()), "{} frames", out.len());
        for (i, t) in out.iter().enumerate() {
            assert_eq!(t.ms, 1000 + i as i64 * 1024 * 1000 / 48_000);
            assert_eq!(&t.body[..2], &[0xAF, 1]);
        }
        // A 100 ms loss is filled: the timeline does not shift.
        let n = out.len();
        p.push(1000 + 2100, &ulaw_tone(160, 0), &mut out).unwrap();
        assert!(out.len() > n);
        assert_eq!(p.restarts(), 0);
        // A 10 s hold restarts at the new position.
        out.clear();
        for i in 0..20 {
            p.push(20_000 + i * 20, &ulaw_tone(160, 0), &mut out)
                .unwrap();
        }
        assert_eq!(p.restarts(), 1);
        assert_eq!(out[0].ms, 20_000);
    }

    #[test]
    fn g711_passes_through_or_switches_law() {
        let mut out = Vec::new();
        let mut copy = AudioPath::new(AudioCodecPolicy::Copy, "PCMA").unwrap();
        copy.push(40, &[0xD5, 0xD5], &mut out).unwrap();
        assert_eq!(
            out[0],
            AudioTag {
                ms: 40,
                body: Bytes::from_static(&[0x72, 0xD5, 0xD5])
            }
        );
        let mut to_u = AudioPath::new(AudioCodecPolicy::Pcmu, "PCMA").unwrap();
        assert_eq!(to_u.format().codec_id, flv::AUDIO_CODEC_PCMU);
        out.clear();
        to_u.push(0, &[0xD5], &mut out).unwrap();
        assert_eq!(out[0].body[0], 0x82);
        assert!(matches!(out[0].body[1], 0xFF | 0x7F | 0xFE));
        assert!(to_u.sequence_header().is_none());
    }

    #[test]
    fn opus_is_decoded_to_aac() {
        let mut enc =
            opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut path_opus = AudioPath::new(
            AudioCodecPolicy::Aac {
                sample_rate: 48000,
                bitrate: 64000,
            },
            "opus",
        )
        .unwrap();
        let mut out = Vec::new();
        // One second of a 440 Hz tone in 20 ms Opus packets.
        for k in 0..50 {
            let pcm: Vec<f32> = (0..960)
                .map(|i| {
                    ((2.0 * std::f32::consts::PI * 440.0 * (k * 960 + i) as f32 / 48000.0).sin())
                        * 0.3
                })
                .collect();
            let packet = enc.encode_vec_float(&pcm, 4000).unwrap();
            path_opus.push(k as i64 * 20, &packet, &mut out).unwrap();
        }
        // 48 000 samples in, 1024 per AAC frame: about 46 frames (the encoder holds some).
        assert!((40..=47).contains(&out.len()), "{} AAC frames", out.len());
        assert!(out.windows(2).all(|w| w[1].ms > w[0].ms));
        assert!(path_opus.sequence_header().is_some());
    }

    #[test]
    fn opus_is_refused_for_g711_policies() {
        let e = AudioPath::new(AudioCodecPolicy::Copy, "opus").unwrap_err();
        assert!(e.to_string().contains("aac"), "{e}");
        assert_eq!(
            AudioCodecPolicy::parse("AAC", 48000, 64000),
            Some(AudioCodecPolicy::Aac {
                sample_rate: 48000,
                bitrate: 64000
            })
        );
        assert!(AudioCodecPolicy::parse("mp3", 1, 1).is_none());
    }
}
