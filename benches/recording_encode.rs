//! The recorder's G.711 → Opus cost, the largest part of a recorded call's CPU (a profile of
//! the soak: ~80 % of the gateway in libopus). Encodes 10 s of a speech-like PCMU signal for
//! each of 50 streams on one thread and reports 20 ms frames per CPU-second, i.e. how many
//! recorded calls one core can encode in real time (frames/s ÷ 50), and the bytes per second
//! of Opus written.
//!
//! Run: `cargo bench --bench recording_encode` (plain main, no criterion).

use sipstream::media::g711;
use sipstream::media::opus::{G711Law, G711ToOpus};

/// CPU time of this thread, in seconds (Linux: the first field of schedstat, in ns).
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ns| ns / 1e9)
        .unwrap_or(0.0)
}

/// A voice-like test signal: two tones with a syllable-rate envelope, as PCMU.
fn signal(seconds: usize, seed: usize) -> Vec<u8> {
    (0..seconds * 8000)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let f = 180.0 + 20.0 * seed as f64;
            let env = (0.5 + 0.5 * (t * 2.0 * std::f64::consts::PI * 4.0).sin()).powi(2);
            let x = (t * 2.0 * std::f64::consts::PI * f).sin()
                + 0.5 * (t * 2.0 * std::f64::consts::PI * f * 3.1).sin();
            g711::linear_to_ulaw((x * env * 6000.0) as i16)
        })
        .collect()
}

/// Frames per CPU-second and Opus bytes per second per call at `complexity` (None: the
/// recorder's own setting).
fn run(inputs: &[Vec<u8>], seconds: usize, complexity: Option<i32>) -> (f64, f64) {
    let mut encoders: Vec<G711ToOpus> = inputs
        .iter()
        .map(|_| match complexity {
            Some(c) => G711ToOpus::with_complexity(c),
            None => G711ToOpus::new(),
        })
        .collect::<Result<_, _>>()
        .expect("encoder");
    let cpu0 = thread_cpu();
    let (mut frames, mut bytes) = (0u64, 0u64);
    // Interleaved 20 ms chunks, as the recorder feeds live calls.
    for chunk in 0..seconds * 50 {
        for (enc, input) in encoders.iter_mut().zip(inputs) {
            let part = &input[chunk * 160..(chunk + 1) * 160];
            for f in enc.push_g711(G711Law::Ulaw, part).expect("encode") {
                frames += 1;
                bytes += f.len() as u64;
            }
        }
    }
    let cpu = thread_cpu() - cpu0;
    (
        frames as f64 / cpu,
        bytes as f64 / (inputs.len() * seconds) as f64,
    )
}

fn main() {
    let (streams, seconds) = (50, 10);
    let inputs: Vec<Vec<u8>> = (0..streams).map(|s| signal(seconds, s)).collect();
    for c in [10, 5, 3, 2, 1, 0] {
        let (fps, bps) = run(&inputs, seconds, Some(c));
        println!(
            "recording_encode complexity {c:>2}: {fps:>6.0} frames per CPU-second = {:>5.0} recorded calls per core; Opus {bps:.0} bytes/s per call",
            fps / 50.0
        );
    }
    let (fps, bps) = run(&inputs, seconds, None);
    println!(
        "recording_encode as recorded (complexity {}): {fps:.0} frames per CPU-second = {:.0} recorded calls per core; Opus {bps:.0} bytes/s per call",
        sipstream::media::opus::RECORDING_COMPLEXITY,
        fps / 50.0
    );
}
