//! Opus helpers for recording: G.711 (8 kHz) → Opus 20 ms frames (narrowband), and the duration
//! of an Opus packet from its TOC byte (RFC 6716 §3.1).
//!
//! Owns sample-level work only: the caller decides where in time samples belong (it inserts
//! silence for gaps); this module never looks at a clock.

use thiserror::Error;

use super::g711;

/// 20 ms at 8 kHz: one Opus frame's worth of G.711 input.
pub const FRAME_8K: usize = 160;
/// 20 ms at 48 kHz.
pub const FRAME_48K: usize = 960;

#[derive(Debug, Error)]
pub enum OpusError {
    #[error("opus encoder: {0}")]
    Encoder(#[from] ::opus::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G711Law {
    Ulaw,
    Alaw,
}

/// Decodes G.711 and encodes mono narrowband Opus in 20 ms frames.
pub struct G711ToOpus {
    encoder: ::opus::Encoder,
    pre_skip: u16,
    /// 8 kHz samples not yet encoded (< one frame after each call).
    pending: Vec<i16>,
    decoded: Vec<i16>,
    out: Vec<u8>,
}

impl std::fmt::Debug for G711ToOpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G711ToOpus")
            .field("pending", &self.pending.len())
            .finish()
    }
}

/// The recorder's encoder complexity (libopus 0–10; its default is 9–10). G.711 is narrowband
/// telephone speech, and at 1 SILK skips the delayed-decision quantiser that took most of a
/// recorded call's CPU: 3.2× the calls per core of the 48 kHz, complexity-10 encoder this
/// replaced, at the same bitrate (`cargo bench --bench recording_encode` prints the cost of
/// each complexity: 140 calls per core at 10, 239 at 5, 539 at 1).
pub const RECORDING_COMPLEXITY: i32 = 1;

impl G711ToOpus {
    pub fn new() -> Result<Self, OpusError> {
        Self::with_complexity(RECORDING_COMPLEXITY)
    }

    /// The encoder takes the 8 kHz signal as it is (Opus codes narrowband natively; a 48 kHz
    /// input would only make SILK resample it back down), at `complexity` (0–10).
    pub fn with_complexity(complexity: i32) -> Result<Self, OpusError> {
        let mut encoder =
            ::opus::Encoder::new(8000, ::opus::Channels::Mono, ::opus::Application::Voip)?;
        encoder.set_bitrate(::opus::Bitrate::Bits(32000))?;
        encoder.set_complexity(complexity.clamp(0, 10))?;
        // Pre-skip is counted at 48 kHz whatever the input rate (RFC 7845 §4.2).
        let lookahead = u16::try_from(encoder.get_lookahead()?.max(0)).unwrap_or(0);
        Ok(Self {
            encoder,
            pre_skip: lookahead.saturating_mul(6),
            pending: Vec::with_capacity(FRAME_8K * 2),
            decoded: Vec::new(),
            out: vec![0; 1500],
        })
    }

    /// Samples at 48 kHz a decoder must drop at the start (the encoder's lookahead).
    pub fn pre_skip(&self) -> u16 {
        self.pre_skip
    }

    /// 8 kHz samples buffered towards the next frame.
    pub fn pending_samples(&self) -> usize {
        self.pending.len()
    }

    /// Feeds G.711 bytes; returns the Opus frames completed (20 ms each).
    pub fn push_g711(&mut self, law: G711Law, codes: &[u8]) -> Result<Vec<Vec<u8>>, OpusError> {
        self.decoded.clear();
        match law {
            G711Law::Ulaw => g711::decode_ulaw(codes, &mut self.decoded),
            G711Law::Alaw => g711::decode_alaw(codes, &mut self.decoded),
        }
        let pcm = std::mem::take(&mut self.decoded);
        let r = self.push_pcm(&pcm);
        self.decoded = pcm;
        r
    }

    /// Feeds `n` samples of silence (a gap in the call's audio).
    pub fn push_silence(&mut self, n: usize) -> Result<Vec<Vec<u8>>, OpusError> {
        let mut frames = Vec::new();
        let mut left = n;
        let zeros = [0i16; FRAME_8K];
        while left > 0 {
            let k = left.min(FRAME_8K);
            frames.extend(self.push_pcm(&zeros[..k])?);
            left -= k;
        }
        Ok(frames)
    }

    /// Feeds linear 8 kHz PCM.
    pub fn push_pcm(&mut self, pcm: &[i16]) -> Result<Vec<Vec<u8>>, OpusError> {
        let mut frames = Vec::new();
        let mut rest = pcm;
        while !rest.is_empty() {
            let need = FRAME_8K - self.pending.len();
            let k = need.min(rest.len());
            self.pending.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            if self.pending.len() == FRAME_8K {
                frames.push(self.encode_pending()?);
            }
        }
        Ok(frames)
    }

    /// Pads a partial frame with silence and encodes it (for a clean end).
    pub fn flush(&mut self) -> Result<Option<Vec<u8>>, OpusError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        self.pending.resize(FRAME_8K, 0);
        self.encode_pending().map(Some)
    }

    fn encode_pending(&mut self) -> Result<Vec<u8>, OpusError> {
        let n = self.encoder.encode(&self.pending, &mut self.out)?;
        self.pending.clear();
        Ok(self.out[..n].to_vec())
    }
}

/// Samples at 48 kHz in an Opus packet, from its TOC (and frame count byte for code 3).
/// `None` for an empty or malformed packet.
pub fn packet_samples_48k(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame: u32 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    let total = frame * frames;
    // RFC 6716: a packet holds at most 120 ms.
    (frames > 0 && total <= 5760).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_durations() {
        assert_eq!(
            packet_samples_48k(crate::media::g711::OPUS_SILENCE_20MS),
            Some(960)
        );
        assert_eq!(packet_samples_48k(&[0x08]), Some(960)); // SILK NB 20 ms
        assert_eq!(packet_samples_48k(&[0x0B, 3]), Some(2880)); // code 3, three frames
        assert_eq!(packet_samples_48k(&[0x0B, 0]), None);
        assert_eq!(packet_samples_48k(&[]), None);
    }

    #[test]
    fn encodes_one_frame_per_20ms() {
        let mut t = G711ToOpus::new().unwrap();
        assert!(t.pre_skip() > 0);
        let tone: Vec<u8> = (0..800)
            .map(|i| {
                let x = (i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin();
                g711::linear_to_ulaw((x * 8000.0) as i16)
            })
            .collect();
        let mut frames = t.push_g711(G711Law::Ulaw, &tone[..100]).unwrap();
        assert!(frames.is_empty());
        frames.extend(t.push_g711(G711Law::Ulaw, &tone[100..]).unwrap());
        assert_eq!(frames.len(), 5);
        assert_eq!(t.pending_samples(), 0);
        frames.extend(t.push_silence(200).unwrap());
        assert_eq!(frames.len(), 6);
        assert!(t.flush().unwrap().is_some());
        for f in &frames {
            assert_eq!(packet_samples_48k(f), Some(960));
        }
    }
}
