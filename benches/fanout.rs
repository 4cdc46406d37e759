//! Registry fan-out cost: one publisher, N readers (1, 10, 100, 1000), each reader a tokio
//! task draining its bounded queue. Two runs per N:
//! - burst: publish as fast as possible; reports packets-out per second (units delivered to
//!   readers), per-publish cost percentiles and drops (queues of 256);
//! - paced: 5 000 packets/s (one every 200 µs, sleep + spin paced); reports publish → reader latency
//!   percentiles, to compare with PEERS.md's broadcast-with-a-task-per-reader figure.
//!
//! Run: `cargo bench --bench fanout` (plain main, no criterion).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sipstream::registry::{MediaUnit, ReaderEvent, Registry, TrackSpec};

const QUEUE: usize = 256;

fn spec() -> TrackSpec {
    TrackSpec::audio("PCMU", 8000, 0)
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).copied().unwrap_or(0)
}

struct Run {
    wall: Duration,
    publish_ns: Vec<u64>,
    latency_ns: Vec<u64>,
    delivered: u64,
    dropped: u64,
}

fn run(rt: &tokio::runtime::Runtime, readers: usize, packets: u32, pace: Option<Duration>) -> Run {
    let reg = Registry::new(QUEUE);
    let publisher = reg.create("bench", None).expect("create");
    let track = publisher.add_track(spec()).expect("track");
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let mut r = reg.subscribe("bench", "bench").expect("subscribe");
            rt.spawn(async move {
                let mut lat = Vec::new();
                let mut n = 0u64;
                while let Some(ev) = r.recv().await {
                    if let ReaderEvent::Media(u) = ev {
                        n += 1;
                        if pace.is_some() {
                            lat.push(u.arrival.elapsed().as_nanos() as u64);
                        }
                    }
                }
                (n, r.dropped(), lat)
            })
        })
        .collect();
    // Let the reader tasks park on their queues.
    std::thread::sleep(Duration::from_millis(50));
    let payload = Bytes::from(vec![0xFFu8; 160]);
    let mut publish_ns = Vec::with_capacity(packets as usize);
    let start = Instant::now();
    for seq in 0..packets {
        if let Some(p) = pace {
            // Sleep most of the gap (leaving the CPU to the readers: 2 cores here), spin the
            // last stretch for accuracy.
            let due = start + p * seq;
            let left = due.saturating_duration_since(Instant::now());
            if left > Duration::from_micros(150) {
                std::thread::sleep(left - Duration::from_micros(100));
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
        }
        let t = Instant::now();
        publisher.publish(MediaUnit {
            track,
            payload_type: 0,
            seq: seq as u16,
            timestamp: seq.wrapping_mul(160),
            marker: false,
            ssrc: 1,
            payload: payload.clone(),
            arrival: t,
        });
        publish_ns.push(t.elapsed().as_nanos() as u64);
    }
    publisher.end("bench done");
    let mut delivered = 0;
    let mut dropped = 0;
    let mut latency_ns = Vec::new();
    for t in tasks {
        let (n, d, lat) = rt.block_on(t).expect("reader task");
        delivered += n;
        dropped += d;
        latency_ns.extend(lat);
    }
    let wall = start.elapsed();
    publish_ns.sort_unstable();
    latency_ns.sort_unstable();
    Run {
        wall,
        publish_ns,
        latency_ns,
        delivered,
        dropped,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "registry fan-out, reader queue {QUEUE}, {cores} CPUs, 2 tokio workers + publisher thread"
    );
    println!();
    println!("burst (publish as fast as possible)");
    println!(
        "{:>7} {:>9} {:>12} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "readers", "packets", "out/s", "publish/s", "p50 ns", "p99 ns", "mean ns", "dropped%"
    );
    for &n in &[1usize, 10, 100, 1000] {
        let packets = (2_000_000 / n as u32).clamp(2_000, 200_000);
        let r = run(&rt, n, packets, None);
        let mean = r.publish_ns.iter().sum::<u64>() as f64 / r.publish_ns.len().max(1) as f64;
        let total = u64::from(packets) * n as u64;
        println!(
            "{:>7} {:>9} {:>12.0} {:>12.0} {:>10} {:>10} {:>10.0} {:>8.1}%",
            n,
            packets,
            r.delivered as f64 / r.wall.as_secs_f64(),
            f64::from(packets) / r.wall.as_secs_f64(),
            pct(&r.publish_ns, 0.5),
            pct(&r.publish_ns, 0.99),
            mean,
            100.0 * r.dropped as f64 / total as f64,
        );
        assert_eq!(
            r.delivered + r.dropped,
            total,
            "every unit delivered or counted"
        );
    }
    println!();
    println!("paced (5000 packets/s for 0.4 s; latency = publish -> reader recv)");
    println!(
        "{:>7} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "readers", "pub p50", "pub p99", "lat p50", "lat p99", "lat max", "dropped%"
    );
    for &n in &[1usize, 10, 100, 1000] {
        let packets = 2_000;
        let r = run(&rt, n, packets, Some(Duration::from_micros(200)));
        let total = u64::from(packets) * n as u64;
        println!(
            "{:>7} {:>8}ns {:>8}ns {:>8}us {:>8}us {:>8}us {:>8.2}%",
            n,
            pct(&r.publish_ns, 0.5),
            pct(&r.publish_ns, 0.99),
            pct(&r.latency_ns, 0.5) / 1000,
            pct(&r.latency_ns, 0.99) / 1000,
            r.latency_ns.last().copied().unwrap_or(0) / 1000,
            100.0 * r.dropped as f64 / total as f64,
        );
    }
}
