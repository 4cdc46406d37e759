//! A rational polyphase resampler for mono `f32` audio (windowed-sinc FIR, Blackman window).
//!
//! Used to bring 8 kHz G.711 up to the AAC encoder's rate and between legs' codecs; any ratio of integer rates works
//! (48000/8000 = 6/1 phases, 44100/8000 = 441/80). Streaming: `process` may be called with
//! any chunk size and the output continues seamlessly. Pure; no allocation after warm-up
//! except the output it appends to.

/// Taps per phase: the filter spans this many input samples.
const TAPS: usize = 24;

#[derive(Debug, Clone)]
pub struct Resampler {
    l: u64,
    m: u64,
    /// `phases[p][k]`: coefficient for input `i - k` at phase `p`.
    phases: Vec<[f32; TAPS]>,
    /// Input history; `buf[0]` is input sample number `base`.
    buf: Vec<f32>,
    base: u64,
    /// Position of the next output sample on the upsampled grid (input index × L).
    t: u64,
    pub in_rate: u32,
    pub out_rate: u32,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Resampler {
    /// `None` when a rate is 0.
    pub fn new(in_rate: u32, out_rate: u32) -> Option<Self> {
        if in_rate == 0 || out_rate == 0 {
            return None;
        }
        let g = gcd(u64::from(in_rate), u64::from(out_rate));
        let (l, m) = (u64::from(out_rate) / g, u64::from(in_rate) / g);
        let n = TAPS * l as usize;
        // Cut-off below the lower Nyquist frequency, in cycles per upsampled sample.
        let fc = 0.45 * f64::from(in_rate.min(out_rate)) / (f64::from(in_rate) * l as f64);
        let centre = (n as f64 - 1.0) / 2.0;
        let mut h = vec![0f64; n];
        for (i, v) in h.iter_mut().enumerate() {
            let x = i as f64 - centre;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            let w = 2.0 * std::f64::consts::PI * i as f64 / (n as f64 - 1.0);
            let blackman = 0.42 - 0.5 * w.cos() + 0.08 * (2.0 * w).cos();
            *v = sinc * blackman * l as f64;
        }
        let phases = (0..l as usize)
            .map(|p| {
                let mut c = [0f32; TAPS];
                for (k, c) in c.iter_mut().enumerate() {
                    *c = h[p + k * l as usize] as f32;
                }
                c
            })
            .collect();
        Some(Self {
            l,
            m,
            phases,
            buf: vec![0.0; TAPS - 1],
            base: 0,
            t: (TAPS as u64 - 1) * l,
            in_rate,
            out_rate,
        })
    }

    /// Resamples `input`, appending to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.buf.extend_from_slice(input);
        let avail = self.base + self.buf.len() as u64;
        loop {
            let i = self.t / self.l;
            if i >= avail {
                break;
            }
            let phase = &self.phases[(self.t % self.l) as usize];
            let at = (i - self.base) as usize;
            let mut acc = 0f32;
            for (k, c) in phase.iter().enumerate() {
                acc += c * self.buf[at - k];
            }
            out.push(acc);
            self.t += self.m;
        }
        // Keep the TAPS-1 samples before the next output's input index.
        let keep_from = (self.t / self.l).saturating_sub(TAPS as u64 - 1);
        if keep_from > self.base {
            let drop = ((keep_from - self.base) as usize).min(self.buf.len());
            self.buf.drain(..drop);
            self.base += drop as u64;
        }
    }

    /// Forgets the history (after a gap: the next input does not continue the last).
    pub fn reset(&mut self) {
        if let Some(r) = Self::new(self.in_rate, self.out_rate) {
            *self = r;
        }
    }
}

/// A [`Resampler`] for 16-bit samples: converts to and from `f32` in buffers of its own.
#[derive(Debug)]
pub struct PcmResampler {
    inner: Resampler,
    fin: Vec<f32>,
    fout: Vec<f32>,
}

impl PcmResampler {
    pub fn new(in_rate: u32, out_rate: u32) -> Option<Self> {
        Some(Self {
            inner: Resampler::new(in_rate, out_rate)?,
            fin: Vec::new(),
            fout: Vec::new(),
        })
    }

    /// Appends `input` resampled to `out`; streaming, like [`Resampler::process`].
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.fin.clear();
        self.fin
            .extend(input.iter().map(|s| f32::from(*s) / 32768.0));
        self.fout.clear();
        self.inner.process(&self.fin, &mut self.fout);
        out.extend(
            self.fout
                .iter()
                .map(|s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16),
        );
    }

    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin()) as f32
            })
            .collect()
    }

    fn check(in_rate: u32, out_rate: u32) {
        let input = tone(in_rate, 440.0, in_rate as usize);
        let mut r = Resampler::new(in_rate, out_rate).unwrap();
        let mut out = Vec::new();
        // Odd chunk sizes: output must not depend on them.
        for chunk in input.chunks(157) {
            r.process(chunk, &mut out);
        }
        let expected = out_rate as usize;
        assert!(
            out.len().abs_diff(expected) <= 1 + (out_rate / in_rate) as usize,
            "{} vs {expected}",
            out.len()
        );
        // After the filter's (possibly fractional) delay the output is the same tone.
        let delay = (TAPS as f64 / 2.0) * f64::from(out_rate) / f64::from(in_rate);
        let skip = out_rate as usize / 10;
        let mut best = f32::MAX;
        for step in -60..=60 {
            let d = delay + f64::from(step) * 0.05;
            let err: f32 = out[skip..out.len() - skip]
                .iter()
                .enumerate()
                .map(|(i, y)| {
                    let t = (skip + i) as f64 - d;
                    let want =
                        0.5 * (2.0 * std::f64::consts::PI * 440.0 * t / f64::from(out_rate)).sin();
                    (y - want as f32).abs()
                })
                .fold(0.0, f32::max);
            best = best.min(err);
        }
        assert!(best < 0.02, "{in_rate}->{out_rate}: max error {best}");
    }

    #[test]
    fn up_and_down_keep_a_tone() {
        check(8000, 48000);
        check(8000, 44100);
        check(8000, 16000);
        check(48000, 16000);
    }
}
