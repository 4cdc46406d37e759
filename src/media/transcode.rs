//! Audio from one leg's codec and packet time to another's: what a bridge between two call
//! legs (PCMU ↔ PCMA ↔ Opus) and any "play into a leg" path needs. Sans-IO: payloads in,
//! payloads of one ptime each out. Same codec and the right packet size pass through
//! untouched; otherwise samples go through a FIFO at the target rate (decode, resample,
//! re-frame, encode), so a 30 ms sender feeds a 20 ms leg without gaps.

use bytes::Bytes;
use thiserror::Error;

use super::g711;
use super::resample::PcmResampler;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Pcmu,
    Pcma,
    Opus,
}

impl AudioCodec {
    /// From an rtpmap encoding name; None for what we cannot transcode.
    pub fn from_encoding(encoding: &str) -> Option<Self> {
        match encoding.to_ascii_uppercase().as_str() {
            "PCMU" => Some(Self::Pcmu),
            "PCMA" => Some(Self::Pcma),
            "OPUS" => Some(Self::Opus),
            _ => None,
        }
    }

    pub fn sample_rate(self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma => 8000,
            Self::Opus => 48000,
        }
    }
}

#[derive(Debug, Error)]
pub enum TranscodeError {
    #[error("opus: {0}")]
    Opus(#[from] ::opus::Error),
    #[error("cannot resample {0} Hz to {1} Hz")]
    Rate(u32, u32),
}

/// One direction of audio between two codecs.
pub struct Transcoder {
    from: AudioCodec,
    to: AudioCodec,
    /// Samples per outgoing packet at the target rate.
    frame: usize,
    /// Source payloads to samples at the target rate and those to target payloads (None:
    /// the codecs are the same).
    path: Option<(PcmDecoder, PcmEncoder)>,
    /// Decoded samples of one payload.
    pcm: Vec<i16>,
    /// Same G.711 law: the codes themselves wait here when packet sizes differ.
    codes: Vec<u8>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("frame", &self.frame)
            .finish()
    }
}

/// Longest Opus packet: 120 ms at 48 kHz.
const OPUS_MAX_SAMPLES: usize = 5760;
/// Samples beyond this many frames are dropped (the sender runs ahead of our clock).
const FIFO_FRAMES: usize = 10;

fn frame_len(rate: u32, ptime_ms: u32) -> usize {
    let ptime = if ptime_ms == 0 { 20 } else { ptime_ms } as usize;
    rate as usize * ptime / 1000
}

impl Transcoder {
    pub fn new(from: AudioCodec, to: AudioCodec, ptime_ms: u32) -> Result<Self, TranscodeError> {
        let path = if from == to {
            None
        } else {
            Some((
                PcmDecoder::new(from, to.sample_rate())?,
                PcmEncoder::new(to.sample_rate(), to, ptime_ms)?,
            ))
        };
        Ok(Self {
            from,
            to,
            frame: frame_len(to.sample_rate(), ptime_ms),
            path,
            pcm: Vec::with_capacity(OPUS_MAX_SAMPLES),
            codes: Vec::new(),
        })
    }

    pub fn from(&self) -> AudioCodec {
        self.from
    }

    pub fn to(&self) -> AudioCodec {
        self.to
    }

    /// A payload of `len` bytes would go out unchanged: the caller can pass its own bytes
    /// on (no copy) instead of calling [`Transcoder::push`].
    pub fn passes_through(&self, len: usize) -> bool {
        match (self.from, self.to) {
            (AudioCodec::Opus, AudioCodec::Opus) => len > 0,
            (a, b) => a == b && len == self.frame && self.codes.is_empty(),
        }
    }

    /// One payload of the source codec; appends the target payloads now complete.
    pub fn push(&mut self, payload: &[u8], out: &mut Vec<Bytes>) -> Result<(), TranscodeError> {
        if payload.is_empty() {
            return Ok(());
        }
        if self.passes_through(payload.len()) {
            out.push(Bytes::copy_from_slice(payload));
            return Ok(());
        }
        let Some((decoder, encoder)) = self.path.as_mut() else {
            // Same G.711 law, other packet size: bytes are samples, re-framed.
            self.codes.extend_from_slice(payload);
            let cap = self.frame * FIFO_FRAMES;
            if self.codes.len() > cap {
                let excess = self.codes.len() - cap;
                self.codes.drain(..excess);
            }
            while self.codes.len() >= self.frame {
                out.push(Bytes::copy_from_slice(&self.codes[..self.frame]));
                self.codes.drain(..self.frame);
            }
            return Ok(());
        };
        self.pcm.clear();
        decoder.decode(payload, &mut self.pcm)?;
        encoder.push(&self.pcm, out)
    }
}

/// Encodes mono samples at a chosen rate into one codec's payloads of one packet time each:
/// what plays PCM from elsewhere (a file, a WebSocket agent, another leg) into a leg.
/// Resamples when the rate is not the codec's (Opus encodes 8, 12, 16, 24 and 48 kHz input
/// directly); samples short of a whole packet wait for the next push.
pub struct PcmEncoder {
    to: AudioCodec,
    /// Samples per packet at the input rate.
    frame: usize,
    resampler: Option<PcmResampler>,
    opus: Option<::opus::Encoder>,
    fifo: Vec<i16>,
    encoded: Vec<u8>,
}

impl std::fmt::Debug for PcmEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcmEncoder")
            .field("to", &self.to)
            .field("frame", &self.frame)
            .finish()
    }
}

impl PcmEncoder {
    /// Samples at `rate` into `to` payloads of `ptime_ms` (0: 20 ms).
    pub fn new(rate: u32, to: AudioCodec, ptime_ms: u32) -> Result<Self, TranscodeError> {
        let opus_direct = matches!(rate, 8000 | 12000 | 16000 | 24000 | 48000);
        let (resampler, frame_rate) = match to {
            AudioCodec::Opus if opus_direct => (None, rate),
            _ if rate == to.sample_rate() => (None, rate),
            _ => (
                Some(
                    PcmResampler::new(rate, to.sample_rate())
                        .ok_or(TranscodeError::Rate(rate, to.sample_rate()))?,
                ),
                to.sample_rate(),
            ),
        };
        let opus = match to {
            AudioCodec::Opus => {
                let mut e = ::opus::Encoder::new(
                    frame_rate,
                    ::opus::Channels::Mono,
                    ::opus::Application::Voip,
                )?;
                e.set_bitrate(::opus::Bitrate::Bits(32000))?;
                Some(e)
            }
            _ => None,
        };
        Ok(Self {
            to,
            frame: frame_len(frame_rate, ptime_ms),
            resampler,
            opus,
            fifo: Vec::new(),
            encoded: vec![0; 1500],
        })
    }

    /// Forgets samples that wait for a whole packet (a barge-in).
    pub fn clear(&mut self) {
        self.fifo.clear();
        if let Some(r) = &mut self.resampler {
            r.reset();
        }
    }

    /// Appends the payloads that `pcm` completes to `out`.
    pub fn push(&mut self, pcm: &[i16], out: &mut Vec<Bytes>) -> Result<(), TranscodeError> {
        match &mut self.resampler {
            None => self.fifo.extend_from_slice(pcm),
            Some(r) => r.process(pcm, &mut self.fifo),
        }
        let cap = self.frame * FIFO_FRAMES;
        if self.fifo.len() > cap {
            let excess = self.fifo.len() - cap;
            self.fifo.drain(..excess);
        }
        let mut done = 0;
        while self.fifo.len() - done >= self.frame {
            let frame = &self.fifo[done..done + self.frame];
            let payload = match self.to {
                AudioCodec::Pcmu => {
                    let mut v = Vec::with_capacity(frame.len());
                    g711::encode_ulaw(frame, &mut v);
                    Bytes::from(v)
                }
                AudioCodec::Pcma => {
                    let mut v = Vec::with_capacity(frame.len());
                    g711::encode_alaw(frame, &mut v);
                    Bytes::from(v)
                }
                AudioCodec::Opus => {
                    let enc = self.opus.as_mut().expect("an Opus target has an encoder");
                    let n = enc.encode(frame, &mut self.encoded)?;
                    Bytes::copy_from_slice(&self.encoded[..n])
                }
            };
            out.push(payload);
            done += self.frame;
        }
        self.fifo.drain(..done);
        Ok(())
    }
}

/// Decodes one codec's payloads to mono samples at a chosen rate (for mixing).
pub struct PcmDecoder {
    codec: AudioCodec,
    opus: Option<::opus::Decoder>,
    resampler: Option<PcmResampler>,
    decoded: Vec<i16>,
}

impl PcmDecoder {
    /// `rate`: 8000 (no resampling from G.711; Opus decodes at 8 kHz itself) or any other.
    pub fn new(codec: AudioCodec, rate: u32) -> Result<Self, TranscodeError> {
        let opus = match codec {
            // Opus decodes at 8, 12, 16, 24 or 48 kHz directly.
            AudioCodec::Opus => Some(::opus::Decoder::new(rate, ::opus::Channels::Mono)?),
            _ => None,
        };
        let resampler = match codec {
            AudioCodec::Pcmu | AudioCodec::Pcma if rate != 8000 => {
                Some(PcmResampler::new(8000, rate).ok_or(TranscodeError::Rate(8000, rate))?)
            }
            _ => None,
        };
        Ok(Self {
            codec,
            opus,
            resampler,
            decoded: Vec::with_capacity(OPUS_MAX_SAMPLES),
        })
    }

    /// Appends the payload's samples to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), TranscodeError> {
        self.decoded.clear();
        match self.codec {
            AudioCodec::Pcmu => g711::decode_ulaw(payload, &mut self.decoded),
            AudioCodec::Pcma => g711::decode_alaw(payload, &mut self.decoded),
            AudioCodec::Opus => {
                let dec = self.opus.as_mut().expect("an Opus decoder");
                self.decoded.resize(OPUS_MAX_SAMPLES, 0);
                let n = dec.decode(payload, &mut self.decoded, false)?;
                self.decoded.truncate(n);
            }
        }
        match &mut self.resampler {
            None => out.extend_from_slice(&self.decoded),
            Some(r) => r.process(&self.decoded, out),
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    /// Power of `hz` in `pcm` relative to the total (Goertzel).
    pub(crate) fn share_at(pcm: &[i16], rate: u32, hz: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
        let (mut s1, mut s2) = (0f64, 0f64);
        let mut total = 0f64;
        for x in pcm {
            let x = f64::from(*x);
            total += x * x;
            let s = x + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        p * 2.0 / (pcm.len() as f64 * total.max(1.0))
    }

    fn ulaw(pcm: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        g711::encode_ulaw(pcm, &mut v);
        v
    }

    #[test]
    fn same_codec_and_size_passes_through_and_other_sizes_are_reframed() {
        let mut t = Transcoder::new(AudioCodec::Pcmu, AudioCodec::Pcmu, 20).unwrap();
        let mut out = Vec::new();
        t.push(&[1u8; 160], &mut out).unwrap();
        assert_eq!(out, vec![Bytes::from(vec![1u8; 160])]);
        out.clear();
        // 30 ms packets into a 20 ms leg: 240 + 240 bytes = three 160-byte packets.
        t.push(&[2u8; 240], &mut out).unwrap();
        t.push(&[3u8; 240], &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|p| p.len() == 160));
        assert_eq!(&out[1][..80], &[2u8; 80][..]);
        assert_eq!(&out[1][80..], &[3u8; 80][..]);
    }

    #[test]
    fn pcmu_to_pcma_keeps_the_tone() {
        let mut t = Transcoder::new(AudioCodec::Pcmu, AudioCodec::Pcma, 20).unwrap();
        let pcm = tone(8000, 440.0, 1600);
        let mut out = Vec::new();
        for chunk in pcm.chunks(160) {
            t.push(&ulaw(chunk), &mut out).unwrap();
        }
        assert_eq!(out.len(), 10);
        let mut back = Vec::new();
        for p in &out {
            g711::decode_alaw(p, &mut back);
        }
        assert!(
            share_at(&back, 8000, 440.0) > 0.9,
            "{}",
            share_at(&back, 8000, 440.0)
        );
    }

    #[test]
    fn g711_to_opus_and_back_keeps_the_tone() {
        let mut up = Transcoder::new(AudioCodec::Pcmu, AudioCodec::Opus, 20).unwrap();
        let mut down = Transcoder::new(AudioCodec::Opus, AudioCodec::Pcma, 20).unwrap();
        let pcm = tone(8000, 1000.0, 8000);
        let mut opus = Vec::new();
        for chunk in pcm.chunks(160) {
            up.push(&ulaw(chunk), &mut opus).unwrap();
        }
        assert!(opus.len() >= 48, "{} Opus frames", opus.len());
        let mut g711 = Vec::new();
        for p in &opus {
            down.push(p, &mut g711).unwrap();
        }
        assert!(g711.iter().all(|p| p.len() == 160));
        let mut back = Vec::new();
        for p in &g711[10..] {
            g711::decode_alaw(p, &mut back);
        }
        let share = share_at(&back, 8000, 1000.0);
        assert!(share > 0.8, "1 kHz share {share}");
        assert!(share_at(&back, 8000, 440.0) < 0.05);
    }

    #[test]
    fn pcm_at_16khz_is_encoded_to_g711_and_opus_packets() {
        let pcm = tone(16000, 1000.0, 16000);
        let mut e = PcmEncoder::new(16000, AudioCodec::Pcmu, 20).unwrap();
        let mut out = Vec::new();
        for chunk in pcm.chunks(100) {
            e.push(chunk, &mut out).unwrap();
        }
        // One second in, 49 or 50 packets of 20 ms out (the resampler holds a few samples).
        assert!((49..=50).contains(&out.len()), "{}", out.len());
        assert!(out.iter().all(|p| p.len() == 160));
        let mut back = Vec::new();
        for p in &out[2..] {
            g711::decode_ulaw(p, &mut back);
        }
        assert!(share_at(&back, 8000, 1000.0) > 0.9);
        let mut o = PcmEncoder::new(16000, AudioCodec::Opus, 20).unwrap();
        let mut opus = Vec::new();
        o.push(&pcm, &mut opus).unwrap();
        assert_eq!(opus.len(), FIFO_FRAMES.min(50));
        let mut d = PcmDecoder::new(AudioCodec::Opus, 8000).unwrap();
        let mut dec = Vec::new();
        for p in &opus[2..] {
            d.decode(p, &mut dec).unwrap();
        }
        assert!(share_at(&dec, 8000, 1000.0) > 0.8);
        o.clear();
        opus.clear();
        o.push(&pcm[..100], &mut opus).unwrap();
        assert!(opus.is_empty(), "a part packet waits");
    }

    #[test]
    fn a_sender_far_ahead_is_capped_and_garbage_opus_is_an_error() {
        let mut t = Transcoder::new(AudioCodec::Pcmu, AudioCodec::Pcmu, 20).unwrap();
        let mut out = Vec::new();
        t.push(&vec![0u8; 160 * 50 + 7], &mut out).unwrap();
        assert!(out.len() <= FIFO_FRAMES, "{}", out.len());
        let mut t = Transcoder::new(AudioCodec::Opus, AudioCodec::Pcmu, 20).unwrap();
        // A code-3 TOC with an impossible frame count.
        assert!(t.push(&[0xff, 0xff, 0xff], &mut out).is_err());
        assert!(t.push(&[], &mut out).is_ok());
        assert_eq!(AudioCodec::from_encoding("opus"), Some(AudioCodec::Opus));
        assert_eq!(AudioCodec::from_encoding("G729"), None);
    }
}
