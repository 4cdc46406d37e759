//! G.711 μ-law (PCMU) and A-law (PCMA) ⇄ 16-bit linear PCM, by the classic bit arithmetic
//! of the ITU-T reference (as in Sun's public-domain g711.c), plus the silence payloads
//! the RTP legs send when they have nothing else to say.
//!
//! Pure functions over samples; no state, no allocation except in the slice helpers.

/// μ-law code of a zero sample (positive zero). μ-law has two zeros: 0xFF (+0) and 0x7F (−0).
pub const PCMU_SILENCE: u8 = 0xFF;
/// A-law code nearest to zero (+8 in 16-bit linear; A-law has no exact zero).
pub const PCMA_SILENCE: u8 = 0xD5;

/// An Opus packet that decodes to 20 ms of silence.
///
/// TOC byte 0xF8 (RFC 6716 §3.1): config = 0xF8 >> 3 = 31 (CELT-only, fullband, 20 ms
/// frame), s = 0 (mono), c = 0 (one frame in the packet). The two payload bytes 0xFF 0xFE
/// are a CELT frame whose first range-coded symbol, the silence flag (§4.3 "silence",
/// probability 1/32768), decodes as set, so the decoder outputs silence for the whole frame.
/// This is the frame WebRTC stacks send as Opus comfort silence.
pub const OPUS_SILENCE_20MS: &[u8] = &[0xF8, 0xFF, 0xFE];

const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 32635;

/// Encodes one 16-bit linear sample to μ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = i32::from(sample);
    let sign: u8 = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(ULAW_CLIP) + ULAW_BIAS;
    // Segment = position of the highest set bit above bit 7 (0..=7).
    let top = (pcm >> 7) as u32; // 1..=255
    let exponent = 31u32.saturating_sub(top.leading_zeros()).min(7);
    let mantissa = ((pcm >> (exponent + 3)) & 0x0F) as u8;
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// Decodes one μ-law code to a 16-bit linear sample.
pub fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    // magnitude ≤ 32124: fits i16.
    let v = if u & 0x80 != 0 { -magnitude } else { magnitude };
    v as i16
}

/// Encodes one 16-bit linear sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13-bit magnitudes.
    let mut pcm = i32::from(sample) >> 3;
    let mask: u8 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    // Segment end points, 13-bit.
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let seg = SEG_END.iter().position(|&end| pcm <= end);
    match seg {
        None => 0x7F ^ mask,
        Some(seg) => {
            let shift = if seg < 2 { 1 } else { seg };
            let aval = ((seg as u8) << 4) | ((pcm >> shift) & 0x0F) as u8;
            aval ^ mask
        }
    }
}

/// Decodes one A-law code to a 16-bit linear sample.
pub fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    // |t| ≤ 32256: fits i16.
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Encodes samples to μ-law, appending to `out`.
pub fn encode_ulaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_ulaw(s)));
}

/// Decodes μ-law codes, appending to `out`.
pub fn decode_ulaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_to_linear(c)));
}

/// Encodes samples to A-law, appending to `out`.
pub fn encode_alaw(samples: &[i16], out: &mut Vec<u8>) {
    out.extend(samples.iter().map(|&s| linear_to_alaw(s)));
}

/// Decodes A-law codes, appending to `out`.
pub fn decode_alaw(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_to_linear(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_round_trips_all_codes() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            if code == 0x7F {
                // −0 decodes to 0, which encodes as +0.
                assert_eq!(back, 0xFF);
            } else {
                assert_eq!(back, code, "code {code:#04x}");
            }
        }
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_ulaw(0), PCMU_SILENCE);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
    }

    #[test]
    fn alaw_round_trips_all_codes() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
        assert_eq!(alaw_to_linear(PCMA_SILENCE), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(linear_to_alaw(0), PCMA_SILENCE);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    #[test]
    fn quantisation_error_is_bounded() {
        // Every 16-bit sample decodes back within its segment's step.
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(s)));
            let a = i32::from(alaw_to_linear(linear_to_alaw(s)));
            let s = i32::from(s);
            let tol = (s.abs() / 16).max(16) + 700 * i32::from(s.abs() > 32000);
            assert!((u - s).abs() <= tol, "ulaw {s} -> {u}");
            assert!((a - s).abs() <= tol, "alaw {s} -> {a}");
        }
    }

    #[test]
    fn slices() {
        let mut codes = Vec::new();
        encode_ulaw(&[0, 1000, -1000], &mut codes);
        let mut pcm = Vec::new();
        decode_ulaw(&codes, &mut pcm);
        assert_eq!(pcm.len(), 3);
        codes.clear();
        encode_alaw(&[0; 160], &mut codes);
        assert!(codes.iter().all(|&c| c == PCMA_SILENCE));
        decode_alaw(&codes, &mut pcm);
        assert_eq!(pcm.len(), 163);
    }

    #[test]
    fn opus_silence_toc() {
        let toc = OPUS_SILENCE_20MS[0];
        let config = toc >> 3;
        assert_eq!(config, 31, "CELT-only FB 20 ms");
        // Configs 28..=31 are CELT-only fullband at 2.5/5/10/20 ms.
        let frame_ms = [2.5, 5.0, 10.0, 20.0][usize::from(config - 28)];
        assert_eq!(frame_ms, 20.0);
        assert_eq!(toc & 0x04, 0, "mono");
        assert_eq!(toc & 0x03, 0, "code 0: one frame");
        assert_eq!(OPUS_SILENCE_20MS.len(), 3);
    }
}
