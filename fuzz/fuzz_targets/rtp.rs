//! Fuzzes the RTP/RTCP parsers, the receiver statistics and the RTP session with arbitrary
//! datagrams. Properties: nothing panics; a parsed RTP packet's pieces lie inside the
//! datagram and its header round-trips through the writer; the RTCP we write back from what
//! we parsed (RR, SR, PLI, FIR, an SDES CNAME) re-parses to the same values.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sipstream::rtp::packet::{is_rtcp, RtpHeader, RtpPacket};
use sipstream::rtp::rtcp::{self, RtcpPacket};
use sipstream::rtp::session::{RtpSession, SessionConfig};
use sipstream::rtp::stats::RxStats;

fuzz_target!(|data: &[u8]| {
    let rtcp_demux = is_rtcp(data);

    if let Ok(p) = RtpPacket::parse(data) {
        assert!(!rtcp_demux);
        let payload = p.payload();
        assert!(p.header_len() + payload.len() <= data.len());
        assert_eq!(p.payload_range().len(), payload.len());
        assert_eq!(p.csrcs().count(), usize::from(p.csrc_count()));
        let h = RtpHeader {
            pt: p.pt(),
            marker: p.marker(),
            seq: p.seq(),
            timestamp: p.timestamp(),
            ssrc: p.ssrc(),
        };
        let again = h.to_vec(payload);
        let q = RtpPacket::parse(&again).expect("a written header re-parses");
        assert_eq!(
            (
                q.pt(),
                q.marker(),
                q.seq(),
                q.timestamp(),
                q.ssrc(),
                q.payload()
            ),
            (h.pt, h.marker, h.seq, h.timestamp, h.ssrc, payload)
        );
    }

    if let Ok(pkts) = rtcp::parse_compound(data) {
        for p in &pkts {
            // Re-build what we know how to build and check it re-parses the same.
            let mut out = Vec::new();
            match p {
                RtcpPacket::ReceiverReport { ssrc, reports } => {
                    rtcp::write_rr_sdes(*ssrc, reports, "fuzz", &mut out);
                    match rtcp::parse_compound(&out)
                        .expect("built RR re-parses")
                        .first()
                    {
                        Some(RtcpPacket::ReceiverReport { reports: r2, .. }) => {
                            let n = reports.len().min(31);
                            assert_eq!(&r2[..], &reports[..n]);
                        }
                        other => panic!("{other:?}"),
                    }
                }
                RtcpPacket::Pli {
                    sender_ssrc,
                    media_ssrc,
                } => {
                    rtcp::write_pli(*sender_ssrc, *media_ssrc, &mut out);
                    assert_eq!(rtcp::parse_compound(&out).expect("PLI").first(), Some(p));
                }
                RtcpPacket::SenderReport(sr) => {
                    rtcp::write_sr_sdes(sr, "fuzz", &mut out);
                    match rtcp::parse_compound(&out)
                        .expect("built SR re-parses")
                        .first()
                    {
                        Some(RtcpPacket::SenderReport(sr2)) => {
                            let n = sr.reports.len().min(31);
                            assert_eq!(&sr2.reports[..], &sr.reports[..n]);
                            let strip = |s: &rtcp::SenderReport| rtcp::SenderReport {
                                reports: Vec::new(),
                                ..s.clone()
                            };
                            assert_eq!(strip(sr2), strip(sr));
                        }
                        other => panic!("{other:?}"),
                    }
                }
                RtcpPacket::Fir {
                    sender_ssrc,
                    requests,
                } => {
                    if let Some(&(media, seq)) = requests.first() {
                        rtcp::write_fir(*sender_ssrc, media, seq, &mut out);
                        let want = RtcpPacket::Fir {
                            sender_ssrc: *sender_ssrc,
                            requests: vec![(media, seq)],
                        };
                        assert_eq!(
                            rtcp::parse_compound(&out).expect("FIR").first(),
                            Some(&want)
                        );
                    }
                }
                RtcpPacket::Sdes(chunks) => {
                    // A CNAME we were sent, written back in our own RR + SDES.
                    let cname = chunks.iter().find_map(|c| c.cname);
                    if let Some(name) = cname.and_then(|c| std::str::from_utf8(c).ok()) {
                        rtcp::write_rr_sdes(1, &[], name, &mut out);
                        let back = rtcp::parse_compound(&out).expect("built SDES re-parses");
                        let cut = &name.as_bytes()[..name.len().min(255)];
                        match back.get(1) {
                            Some(RtcpPacket::Sdes(c)) => assert_eq!(c[0].cname, Some(cut)),
                            other => panic!("{other:?}"),
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // Statistics over (seq, ts, arrival offset) records taken from the input.
    let t0 = Instant::now();
    let mut stats = RxStats::new(8000);
    for (i, c) in data.chunks_exact(7).enumerate() {
        if let &[s0, s1, t0b, t1, t2, t3, dt] = c {
            let at = t0 + Duration::from_millis(u64::from(dt) + 20 * i as u64);
            let ssrc = u32::from(s0 >> 6); // a few SSRC changes
            stats.on_packet(
                at,
                ssrc,
                u16::from_be_bytes([s0, s1]),
                u32::from_be_bytes([t0b, t1, t2, t3]),
            );
        }
        if i % 16 == 15 {
            let _ = stats.report_block(t0 + Duration::from_secs(i as u64));
        }
    }
    let _ = stats.snapshot();

    // The session takes the datagram on both ports and keeps working.
    let from = SocketAddr::from(([127, 0, 0, 1], 4000));
    let mut cfg = SessionConfig::for_codec(7, "PCMU", 0, 8000);
    cfg.rtcp_interval = Duration::from_millis(50);
    let mut s = RtpSession::new(cfg, t0);
    s.set_ntp_reference(t0, 0xE000_0000_0000_0000);
    let _ = s.handle_rtp(t0, from, data);
    let _ = s.handle_rtcp(t0, from, data);
    let later = t0 + Duration::from_millis(200);
    let mut n = 0;
    while let Some(t) = s.poll_transmit(later) {
        if t.rtcp {
            rtcp::parse_compound(&t.data).expect("our RTCP parses");
        } else {
            RtpPacket::parse(&t.data).expect("our RTP parses");
        }
        n += 1;
        assert!(n < 16, "poll_transmit must not loop");
    }
    assert!(s.poll_timeout() > later);
});
