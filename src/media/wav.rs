//! Reading a WAV file (RIFF, 16-bit PCM, any rate, mono or stereo) into 8 kHz mono samples:
//! the music on hold the gateway plays. Other formats are refused with the reason.

use super::resample::Resampler;

/// 8 kHz mono samples of a WAV file's audio.
pub fn read_8k_mono(data: &[u8]) -> Result<Vec<i16>, String> {
    if data.len() < 12 || &data[..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut pos = 12usize;
    let mut fmt: Option<(u16, u16, u32, u16)> = None;
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let len = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]])
            as usize;
        let body = &data[pos + 8..(pos + 8).saturating_add(len).min(data.len())];
        if id == b"fmt " {
            if body.len() < 16 {
                return Err("fmt chunk too short".into());
            }
            let le16 = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            fmt = Some((le16(0), le16(2), rate, le16(14)));
        } else if id == b"data" {
            let (format, channels, rate, bits) = fmt.ok_or("data chunk before fmt")?;
            // 1 = PCM; 0xFFFE = extensible (PCM assumed for 16-bit).
            if !(format == 1 || format == 0xFFFE) || bits != 16 {
                return Err(format!(
                    "only 16-bit PCM WAV is played (format {format}, {bits} bits)"
                ));
            }
            if channels == 0 || rate == 0 {
                return Err("no channels or no sample rate".into());
            }
            let frame = 2 * channels as usize;
            let mono: Vec<f32> = body
                .chunks_exact(frame)
                .map(|f| {
                    let sum: i32 = f
                        .chunks_exact(2)
                        .map(|s| i32::from(i16::from_le_bytes([s[0], s[1]])))
                        .sum();
                    sum as f32 / channels as f32 / 32768.0
                })
                .collect();
            if mono.is_empty() {
                return Err("no samples".into());
            }
            let out: Vec<f32> = if rate == 8000 {
                mono
            } else {
                let mut r = Resampler::new(rate, 8000).ok_or("bad sample rate")?;
                let mut v = Vec::with_capacity(mono.len() * 8000 / rate as usize + 1);
                r.process(&mono, &mut v);
                v
            };
            return Ok(out
                .iter()
                .map(|s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16)
                .collect());
        }
        pos = pos + 8 + len + (len & 1);
    }
    Err("no data chunk".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let data_len = (samples.len() * 2) as u32;
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(36 + data_len).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
        v.extend_from_slice(&(2 * channels).to_le_bytes());
        v.extend_from_slice(&16u16.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&data_len.to_le_bytes());
        for s in samples {
            v.extend_from_slice(&s.to_le_bytes());
        }
        v
    }

    #[test]
    fn mono_8k_is_read_as_is_and_stereo_48k_is_mixed_down_and_resampled() {
        let s = [1i16, -2, 3, 1000];
        assert_eq!(read_8k_mono(&wav(8000, 1, &s)).unwrap(), s);
        let stereo: Vec<i16> = (0..48000).flat_map(|_| [1000i16, 3000]).collect();
        let out = read_8k_mono(&wav(48000, 2, &stereo)).unwrap();
        assert!(out.len().abs_diff(8000) < 20, "{}", out.len());
        // Mixed down to the mean of both channels (within the resampler's passband ripple).
        assert!((out[4000] - 2000).abs() < 200, "{}", out[4000]);
    }

    #[test]
    fn other_files_are_refused_with_the_reason() {
        assert!(read_8k_mono(b"OggS....").unwrap_err().contains("RIFF"));
        let mut w = wav(8000, 1, &[1, 2]);
        w[34] = 8; // 8-bit
        assert!(read_8k_mono(&w).unwrap_err().contains("16-bit"));
        assert!(read_8k_mono(&wav(8000, 1, &[])).is_err());
        assert!(read_8k_mono(&w[..30]).is_err());
    }
}
