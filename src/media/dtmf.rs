//! RFC 4733 telephone-events received in RTP: one digit per event, reported once when its
//! end packet arrives (the sender repeats the end packet three times; the event's RTP
//! timestamp, which stays the same across its packets, tells the repeats apart). Sans-IO:
//! fed payloads, returns digits.

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

#[cfg(test)]
mod tests {
    use super::*;

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
