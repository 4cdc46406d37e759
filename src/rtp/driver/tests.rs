//! Integration test of the leg driver on 127.0.0.1 with a plain UDP peer.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;
use crate::registry::{Leg as CallLeg, ReaderEvent, Registry, TrackKind, TrackSpec};
use crate::rtp::packet::{RtpHeader, RtpPacket};
use crate::rtp::ports::PortPool;
use crate::rtp::rtcp::{self, RtcpPacket};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn rtp(seq: u16) -> Vec<u8> {
    RtpHeader {
        pt: 0,
        marker: seq == 0,
        seq,
        timestamp: u32::from(seq) * 160,
        ssrc: 0xCAFE,
    }
    .to_vec(&[seq as u8; 160])
}

#[tokio::test]
async fn leg_receives_publishes_sends_silence_and_rr() {
    let (min, max) = crate::rtp::free_test_range(2);
    let pool = PortPool::new(min, max).unwrap();
    let pair = pool.allocate(LO).await.unwrap();
    let leg_rtp = pair.rtp_addr().unwrap();
    let leg_rtcp = pair.rtcp_addr().unwrap();

    let reg = Registry::new(256);
    let publisher = Arc::new(reg.create("leg-test", Some("call-1".into())).unwrap());
    let track = publisher
        .add_track(TrackSpec::audio("PCMU", 8000, 0))
        .unwrap();
    let mut reader = reg.subscribe("leg-test", "test").unwrap();

    let peer = UdpSocket::bind((LO, 0)).await.unwrap();
    let peer_rtcp = UdpSocket::bind((LO, 0)).await.unwrap();
    let mut cfg = SessionConfig::for_codec(0x5151, "PCMU", 0, 8000);
    cfg.rtcp_interval = Duration::from_millis(200);
    // SDP gave an RTCP address; the RTP address is learnt by latching.
    cfg.remote_rtcp = Some(peer_rtcp.local_addr().unwrap());
    let leg = spawn_leg(
        pair,
        cfg,
        publisher.clone(),
        track,
        tracing::info_span!("leg"),
    );
    assert_eq!(pool.in_use(), 1);

    // Garbage first: nothing latches, the task keeps running.
    for junk in [
        &[0u8; 3][..],
        &[0x40; 20][..],
        &[0x8F, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0][..],
    ] {
        peer.send_to(junk, leg_rtp).await.unwrap();
    }
    peer_rtcp
        .send_to(&[0x81, 201, 0, 40], leg_rtcp)
        .await
        .unwrap();
    for seq in 0..50u16 {
        peer.send_to(&rtp(seq), leg_rtp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // The reader gets the track, then all 50 units in order.
    let ev = timeout(Duration::from_secs(2), reader.recv())
        .await
        .unwrap();
    assert!(matches!(ev, Some(ReaderEvent::TrackChanged(0, _))));
    for seq in 0..50u16 {
        match timeout(Duration::from_secs(2), reader.recv())
            .await
            .unwrap()
        {
            Some(ReaderEvent::Media(u)) => {
                assert_eq!(u.seq, seq);
                assert_eq!(u.track, track);
                assert_eq!(u.ssrc, 0xCAFE);
                assert_eq!(&u.payload[..], &[seq as u8; 160]);
            }
            other => panic!("{other:?}"),
        }
    }

    // The peer gets silence every ~20 ms from the leg's RTP port.
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    let t0 = tokio::time::Instant::now();
    while got.len() < 15 {
        let (n, from) = timeout(Duration::from_secs(2), peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, leg_rtp);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        got.push((p.seq(), p.timestamp(), p.marker(), p.payload().to_vec()));
    }
    let elapsed = t0.elapsed();
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0.wrapping_add(1));
        // A late wake-up skips ticks: the timestamp then advances by several packet times
        // (wall-clock media time), never by a fraction of one.
        let dt = w[1].1.wrapping_sub(w[0].1);
        assert!(dt >= 160 && dt % 160 == 0, "timestamp step {dt}");
    }
    assert!(got.iter().all(|g| g.3 == [0xFF; 160]));
    // 14 intervals of 20 ms (some may already have been queued): loose bounds for CI.
    assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");

    // A report (SR, since the leg sends) reaches the peer's RTCP socket.
    let (n, from) = timeout(Duration::from_secs(2), peer_rtcp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, leg_rtcp);
    let pkts = rtcp::parse_compound(&buf[..n]).unwrap();
    // The leg sends silence, so its report is an SR (with the same report blocks an RR
    // would carry).
    let (ssrc, reports) = match &pkts[0] {
        RtcpPacket::SenderReport(sr) => {
            assert!(sr.packet_count >= 1);
            (sr.ssrc, sr.reports.clone())
        }
        RtcpPacket::ReceiverReport { ssrc, reports } => (*ssrc, reports.clone()),
        p => panic!("{p:?}"),
    };
    assert_eq!(ssrc, 0x5151);
    // The first report may leave while the peer is still sending.
    if let Some(b) = reports.first() {
        assert_eq!(b.ssrc, 0xCAFE);
        assert!(b.highest_seq <= 49);
    }
    assert!(matches!(pkts[1], RtcpPacket::Sdes(_)));

    // Stats are a snapshot refreshed every SNAPSHOT_EVERY (50 ms) while media flows.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let st = leg.stats();
    assert!(st.running);
    assert!(st.latched);
    assert_eq!(st.remote_rtp, Some(peer.local_addr().unwrap()));
    assert_eq!(st.session.rx_packets, 50);
    assert_eq!(st.session.rx_bytes, 50 * 160);
    assert_eq!(st.session.invalid, 3);
    assert_eq!(st.session.rtcp_invalid, 1);
    assert!(st.session.tx_packets >= 15);
    assert!(st.session.rtcp_tx >= 1);
    assert_eq!(st.rx.lost, 0);

    // A stranger's packets are dropped after latching.
    let stranger = UdpSocket::bind((LO, 0)).await.unwrap();
    stranger.send_to(&rtp(50), leg_rtp).await.unwrap();
    peer.send_to(&rtp(51), leg_rtp).await.unwrap();
    match timeout(Duration::from_secs(2), reader.recv())
        .await
        .unwrap()
    {
        Some(ReaderEvent::Media(u)) => assert_eq!(u.seq, 51),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(leg.stats().session.from_unknown_source, 1);

    // Direction change: recvonly stops our RTP.
    leg.update(LegUpdate::Direction(Direction::RecvOnly))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let tx_before = leg.stats().session.tx_packets;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(leg.stats().session.tx_packets, tx_before);

    let fin = leg.stop().await;
    assert!(!fin.running);
    assert_eq!(pool.in_use(), 0);
    // The ports are really closed.
    std::net::UdpSocket::bind(leg_rtp).unwrap();
    std::net::UdpSocket::bind(leg_rtcp).unwrap();
    assert_eq!(reg.find("leg-test").unwrap().tracks[0].packets, 51);
}

#[tokio::test]
async fn dropping_handle_stops_leg() {
    let (min, max) = crate::rtp::free_test_range(1);
    let pool = PortPool::new(min, max).unwrap();
    let pair = pool.allocate(LO).await.unwrap();
    let reg = Registry::new(4);
    let publisher = Arc::new(reg.create("x", None).unwrap());
    let leg = spawn_leg(
        pair,
        SessionConfig::for_codec(1, "PCMA", 8, 8000),
        publisher,
        0,
        tracing::Span::none(),
    );
    drop(leg);
    for _ in 0..100 {
        if pool.in_use() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("ports not released");
}

/// A reader's keyframe request reaches the sender as an RTCP PLI from the leg's RTCP port.
#[tokio::test]
async fn reader_keyframe_request_becomes_a_pli_to_the_sender() {
    let (min, max) = crate::rtp::free_test_range(1);
    let pool = PortPool::new(min, max).unwrap();
    let pair = pool.allocate(LO).await.unwrap();
    let leg_rtp = pair.rtp_addr().unwrap();
    let reg = Registry::new(64);
    let publisher = Arc::new(reg.create("pli-test", None).unwrap());
    let track = publisher
        .add_track(TrackSpec {
            kind: TrackKind::Video,
            leg: CallLeg::Callee,
            codec: "H264".into(),
            clock_rate: 90000,
            channels: 1,
            payload_type: 96,
            fmtp: None,
        })
        .unwrap();
    let reader = reg.subscribe("pli-test", "test").unwrap();
    let peer = UdpSocket::bind((LO, 0)).await.unwrap();
    let peer_rtcp = UdpSocket::bind((LO, 0)).await.unwrap();
    let mut cfg = SessionConfig::for_codec(0x7777, "H264", 96, 90000);
    cfg.send_silence = false;
    cfg.rtcp_interval = Duration::from_secs(60);
    cfg.remote_rtcp = Some(peer_rtcp.local_addr().unwrap());
    let leg = spawn_leg(
        pair,
        cfg,
        publisher.clone(),
        track,
        tracing::info_span!("leg"),
    );
    // The sender's first packet latches the leg (and names the SSRC to ask).
    peer.send_to(&rtp(1), leg_rtp).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Drain the first report, then ask.
    let mut buf = [0u8; 1500];
    while timeout(Duration::from_millis(100), peer_rtcp.recv_from(&mut buf))
        .await
        .is_ok()
    {}
    reader.request_keyframe(track);
    peer.send_to(&rtp(2), leg_rtp).await.unwrap();
    let (n, _) = timeout(Duration::from_secs(2), peer_rtcp.recv_from(&mut buf))
        .await
        .expect("a PLI within 2 s")
        .unwrap();
    let pkts = rtcp::parse_compound(&buf[..n]).unwrap();
    assert!(
        pkts.iter().any(|p| matches!(
            p,
            RtcpPacket::Pli {
                media_ssrc: 0xCAFE,
                ..
            }
        )),
        "{pkts:?}"
    );
    leg.stop().await;
}

#[test]
fn recv_batch_reads_what_is_queued_and_tells_when_drained() {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind((LO, 0)).unwrap();
    sock.set_nonblocking(true).unwrap();
    let peer = std::net::UdpSocket::bind((LO, 0)).unwrap();
    let to = sock.local_addr().unwrap();
    let mut batch = RecvBatch::new(RECV_BATCH);

    // Nothing queued: EAGAIN, as WouldBlock.
    let e = batch.read(sock.as_raw_fd()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);

    // One datagram: read, and the queue is known to be empty.
    peer.send_to(&rtp(1), to).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(batch.read(sock.as_raw_fd()).unwrap());
    let got: Vec<(Vec<u8>, SocketAddr)> = batch.datagrams().map(|(d, a)| (d.to_vec(), a)).collect();
    assert_eq!(got, vec![(rtp(1), peer.local_addr().unwrap())]);

    // Three queued: a full batch (not known to be drained), then the rest. A datagram longer
    // than the second buffer is cut there and dropped, never passed on truncated.
    peer.send_to(&rtp(2), to).unwrap();
    peer.send_to(&vec![0x80u8; RECV_BUF_MORE + 100], to)
        .unwrap();
    peer.send_to(&rtp(3), to).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(!batch.read(sock.as_raw_fd()).unwrap());
    let got: Vec<Vec<u8>> = batch.datagrams().map(|(d, _)| d.to_vec()).collect();
    assert_eq!(got, vec![rtp(2)]);
    assert_eq!(batch.truncated, 1);
    assert!(batch.read(sock.as_raw_fd()).unwrap());
    let got: Vec<Vec<u8>> = batch.datagrams().map(|(d, _)| d.to_vec()).collect();
    assert_eq!(got, vec![rtp(3)]);
}
