//! RFC 4733 telephone-events in RTP, both ways. Receiving: one digit per event, reported
//! once when its end packet arrives (the sender repeats the end packet three times; the
//! event's RTP timestamp, which stays the same across its packets, tells the repeats apart).
//! Sending ([`DtmfSender`]): each digit as packets one ptime apart that all carry the event's
//! start timestamp, the first with the marker bit, the duration growing, then the end packet
//! three times, then a pause before the next digit. Sans-IO: fed payloads or ticks.

use std::collections::VecDeque;

/// One DTMF digit the far end sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digit {
    pub digit: char,
    pub duration_ms: u32,
}

/// Reads the telephone-events of one RTP stream.
#[derive(Debug, Clone)]
pub struct TelephoneEvents {
    payload_type: u8,
    clock_rate: u32,
    /// RTP timestamp of the last event reported.
    reported: Option<u32>,
}

impl TelephoneEvents {
    pub fn new(payload_type: u8, clock_rate: u32) -> Self {
        Self {
            payload_type,
            clock_rate: clock_rate.max(1),
            reported: None,
        }
    }

    /// One RTP packet's payload type, timestamp and payload. Some(digit) for the first end
    /// packet of an event that is a DTMF digit (events 0–15); None otherwise, and for
    /// truncated payloads.
    pub fn on_packet(&mut self, payload_type: u8, timestamp: u32, payload: &[u8]) -> Option<Digit> {
        if payload_type != self.payload_type || payload.len() < 4 {
            return None;
        }
        let end = payload[1] & 0x80 != 0;
        if !end || self.reported == Some(timestamp) {
            return None;
        }
        self.reported = Some(timestamp);
        let digit = match payload[0] {
            e @ 0..=9 => char::from(b'0' + e),
            10 => '*',
            11 => '#',
            e @ 12..=15 => char::from(b'A' + (e - 12)),
            _ => return None,
        };
        let units = u32::from(u16::from_be_bytes([payload[2], payload[3]]));
        Some(Digit {
            digit,
            duration_ms: units * 1000 / self.clock_rate,
        })
    }
}

/// The event code of a DTMF digit (RFC 4733 §3.2): 0-9, * = 10, # = 11, A-D = 12-15.
pub fn event_code(digit: char) -> Option<u8> {
    match digit.to_ascii_uppercase() {
        d @ '0'..='9' => Some(d as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        d @ 'A'..='D' => Some(d as u8 - b'A' + 12),
        _ => None,
    }
}

/// One digit to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tone {
    pub event: u8,
    pub duration_ms: u32,
}

/// One telephone-event packet to send in place of the tick's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub payload_type: u8,
    pub marker: bool,
    /// The event's start timestamp (the same for all its packets).
    pub timestamp: u32,
    pub payload: [u8; 4],
}

/// Digits queued beyond this are refused.
pub const MAX_QUEUED_TONES: usize = 64;
/// The end packet goes out this many times (RFC 4733 §2.5.1.4).
const END_REPEATS: u8 = 3;
/// Default volume field: -10 dBm0, what common phones send.
const VOLUME: u8 = 10;

#[derive(Debug, Clone)]
struct Active {
    event: u8,
    start_ts: u32,
    /// Event duration in timestamp units (at most 0xFFFF, RFC 4733 §2.5.2.3 aside).
    total: u32,
    sent: u32,
    ends_sent: u8,
}

/// Sends queued digits as telephone-events, one packet per ptime tick.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    payload_type: u8,
    clock_rate: u32,
    /// Silence between two digits, in ticks.
    gap_ticks: u32,
    queue: VecDeque<Tone>,
    active: Option<Active>,
    gap_left: u32,
}

impl DtmfSender {
    pub fn new(payload_type: u8, clock_rate: u32, ptime_ms: u32) -> Self {
        Self {
            payload_type,
            clock_rate: clock_rate.max(1),
            // 60 ms between digits, at least one tick.
            gap_ticks: (60 / ptime_ms.max(1)).max(1),
            queue: VecDeque::new(),
            active: None,
            gap_left: 0,
        }
    }

    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// Queues digits; false (nothing queued) when that would pass [`MAX_QUEUED_TONES`].
    pub fn push(&mut self, tones: &[Tone]) -> bool {
        if self.queue.len() + tones.len() > MAX_QUEUED_TONES {
            return false;
        }
        self.queue.extend(tones.iter().copied());
        true
    }

    /// Digits are queued or being sent (the media clock must keep ticking).
    pub fn is_busy(&self) -> bool {
        self.active.is_some() || !self.queue.is_empty()
    }

    /// Drops what is queued and in progress (the leg stopped sending).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.active = None;
        self.gap_left = 0;
    }

    /// One ptime tick whose audio would carry timestamp `ts` and `spt` samples: the
    /// telephone-event packet to send instead, or None (audio goes out as usual).
    pub fn tick(&mut self, ts: u32, spt: u32) -> Option<EventPacket> {
        if self.active.is_none() {
            if self.gap_left > 0 {
                self.gap_left -= 1;
                return None;
            }
            let tone = self.queue.pop_front()?;
            let total = (u64::from(tone.duration_ms) * u64::from(self.clock_rate) / 1000)
                .clamp(u64::from(spt), 0xFFFF) as u32;
            self.active = Some(Active {
                event: tone.event,
                start_ts: ts,
                total,
                sent: 0,
                ends_sent: 0,
            });
        }
        let a = self.active.as_mut()?;
        let first = a.sent == 0;
        let (end, duration) = if a.sent + spt < a.total {
            a.sent += spt;
            (false, a.sent)
        } else {
            a.sent = a.total;
            a.ends_sent += 1;
            (true, a.total)
        };
        let packet = EventPacket {
            payload_type: self.payload_type,
            marker: first,
            timestamp: a.start_ts,
            payload: [
                a.event,
                (if end { 0x80 } else { 0 }) | VOLUME,
                (duration >> 8) as u8,
                duration as u8,
            ],
        };
        if a.ends_sent >= END_REPEATS {
            self.active = None;
            self.gap_left = self.gap_ticks;
        }
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_go_out_as_rfc4733_events_that_our_reader_reads_back() {
        let mut tx = DtmfSender::new(101, 8000, 20);
        assert!(tx.push(&[
            Tone {
                event: event_code('1').unwrap(),
                duration_ms: 100
            },
            Tone {
                event: event_code('#').unwrap(),
                duration_ms: 60
            },
        ]));
        let mut rx = TelephoneEvents::new(101, 8000);
        let mut ts = 1000u32;
        let mut packets = Vec::new();
        let mut digits = Vec::new();
        for _ in 0..40 {
            if let Some(p) = tx.tick(ts, 160) {
                if let Some(d) = rx.on_packet(p.payload_type, p.timestamp, &p.payload) {
                    digits.push(d);
                }
                packets.push((ts, p));
            }
            ts = ts.wrapping_add(160);
        }
        assert!(!tx.is_busy());
        assert_eq!(
            digits,
            [
                Digit {
                    digit: '1',
                    duration_ms: 100
                },
                Digit {
                    digit: '#',
                    duration_ms: 60
                }
            ]
        );
        // Digit 1: 100 ms = 800 units in 160-unit steps: 160..640 then three ends of 800.
        let first: Vec<_> = packets.iter().filter(|(_, p)| p.payload[0] == 1).collect();
        assert_eq!(first.len(), 4 + 3, "{first:?}");
        assert!(first[0].1.marker && first.iter().skip(1).all(|(_, p)| !p.marker));
        assert!(first.iter().all(|(_, p)| p.timestamp == 1000));
        let durations: Vec<u16> = first
            .iter()
            .map(|(_, p)| u16::from_be_bytes([p.payload[2], p.payload[3]]))
            .collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends = first
            .iter()
            .filter(|(_, p)| p.payload[1] & 0x80 != 0)
            .count();
        assert_eq!(ends, 3);
        // The second digit starts after a gap of silence, at its own timestamp.
        let second: Vec<_> = packets.iter().filter(|(_, p)| p.payload[0] == 11).collect();
        let last_of_first = first.last().unwrap().0;
        assert!(
            second[0].0 >= last_of_first + 4 * 160,
            "a pause between digits"
        );
        assert_eq!(second[0].1.timestamp, second[0].0);
        assert!(second[0].1.marker);
    }

    #[test]
    fn durations_are_clamped_to_the_16_bit_field_and_one_tick_at_least() {
        let mut tx = DtmfSender::new(96, 48000, 20);
        tx.push(&[Tone {
            event: 5,
            duration_ms: 5000,
        }]);
        let mut last = None;
        let mut ts = 0u32;
        while let Some(p) = tx.tick(ts, 960) {
            last = Some(p);
            ts += 960;
        }
        let p = last.unwrap();
        assert_eq!(u16::from_be_bytes([p.payload[2], p.payload[3]]), 0xFFFF);
        let mut tx = DtmfSender::new(101, 8000, 20);
        tx.push(&[Tone {
            event: 5,
            duration_ms: 1,
        }]);
        let p = tx.tick(0, 160).unwrap();
        assert_eq!(p.payload[1] & 0x80, 0x80, "a short digit is one end packet");
        assert_eq!(u16::from_be_bytes([p.payload[2], p.payload[3]]), 160);
    }

    #[test]
    fn the_queue_is_bounded_and_clear_drops_everything() {
        let mut tx = DtmfSender::new(101, 8000, 20);
        let many = vec![
            Tone {
                event: 1,
                duration_ms: 100
            };
            MAX_QUEUED_TONES + 1
        ];
        assert!(!tx.push(&many));
        assert!(!tx.is_busy());
        assert!(tx.push(&many[..3]));
        assert!(tx.tick(0, 160).is_some());
        tx.clear();
        assert!(!tx.is_busy());
        assert!(tx.tick(160, 160).is_none());
        assert_eq!(event_code('x'), None);
        assert_eq!(event_code('d'), Some(15));
    }

    fn event(e: u8, end: bool, duration: u16) -> [u8; 4] {
        let d = duration.to_be_bytes();
        [e, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    #[test]
    fn one_digit_per_event_on_its_first_end_packet() {
        let mut te = TelephoneEvents::new(101, 8000);
        assert_eq!(te.on_packet(101, 1000, &event(5, false, 160)), None);
        assert_eq!(te.on_packet(101, 1000, &event(5, false, 320)), None);
        let d = te.on_packet(101, 1000, &event(5, true, 800));
        assert_eq!(
            d,
            Some(Digit {
                digit: '5',
                duration_ms: 100
            })
        );
        // The two repeats of the end packet are not new digits.
        assert_eq!(te.on_packet(101, 1000, &event(5, true, 800)), None);
        assert_eq!(te.on_packet(101, 1000, &event(5, true, 800)), None);
        // The next event has a new timestamp.
        let d = te.on_packet(101, 3000, &event(11, true, 400)).unwrap();
        assert_eq!(d.digit, '#');
        assert_eq!(
            te.on_packet(101, 5000, &event(14, true, 400))
                .unwrap()
                .digit,
            'C'
        );
    }

    #[test]
    fn other_payloads_and_garbage_are_ignored() {
        let mut te = TelephoneEvents::new(101, 8000);
        assert_eq!(te.on_packet(0, 1, &event(5, true, 800)), None, "audio");
        assert_eq!(te.on_packet(101, 1, &[5, 0x80]), None, "truncated");
        assert_eq!(
            te.on_packet(101, 2, &event(200, true, 800)),
            None,
            "not a DTMF event"
        );
        assert_eq!(te.on_packet(101, 3, &[]), None);
    }
}
