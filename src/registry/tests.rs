use super::*;

fn pcmu(leg: Leg) -> TrackSpec {
    TrackSpec {
        kind: TrackKind::Audio,
        leg,
        codec: "PCMU".into(),
        clock_rate: 8000,
        channels: 1,
        payload_type: 0,
        fmtp: None,
    }
}

fn unit(track: TrackId, seq: u16) -> MediaUnit {
    MediaUnit {
        track,
        payload_type: 0,
        seq,
        timestamp: u32::from(seq) * 160,
        marker: seq == 0,
        ssrc: 42,
        payload: Bytes::from_static(&[0xFF; 160]),
        arrival: Instant::now(),
    }
}

fn drain(r: &mut Reader) -> Vec<ReaderEvent> {
    let mut v = Vec::new();
    while let Ok(ev) = r.try_recv() {
        v.push(ev);
    }
    v
}

fn media_seqs(evs: &[ReaderEvent]) -> Vec<u16> {
    evs.iter()
        .filter_map(|e| match e {
            ReaderEvent::Media(u) => Some(u.seq),
            _ => None,
        })
        .collect()
}

#[test]
fn names_are_validated_and_unique() {
    let reg = Registry::new(16);
    for bad in ["", "a b", "x/y", "é", &"a".repeat(129)] {
        assert!(
            matches!(
                reg.create(bad, None),
                Err(RegistryError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    let _p = reg.create(&"a".repeat(128), None).unwrap();
    let p = reg.create("call-1.audio_x", Some("c1".into())).unwrap();
    assert_eq!(
        reg.create("call-1.audio_x", None).unwrap_err(),
        RegistryError::AlreadyExists("call-1.audio_x".into())
    );
    assert_eq!(reg.len(), 2);
    drop(p);
    assert_eq!(reg.len(), 1);
    // The name is free again once the stream ended.
    let _p = reg.create("call-1.audio_x", None).unwrap();
}

#[test]
fn subscribe_unknown_is_not_found() {
    let reg = Registry::new(4);
    assert_eq!(
        reg.subscribe("nope", "recorder").unwrap_err(),
        RegistryError::NotFound("nope".into())
    );
}

#[test]
fn slow_reader_drops_only_for_itself() {
    let reg = Registry::new(8);
    let p = reg.create("s", None).unwrap();
    let t = p.add_track(pcmu(Leg::Callee)).unwrap();
    let mut fast: Vec<Reader> = (0..10)
        .map(|_| reg.subscribe("s", "whep").unwrap())
        .collect();
    let mut slow = reg.subscribe("s", "recorder").unwrap();
    let mut got: Vec<Vec<u16>> = vec![Vec::new(); fast.len()];
    for seq in 0..100u16 {
        p.publish(unit(t, seq));
        // Fast readers keep up; the slow one never reads.
        for (r, g) in fast.iter_mut().zip(got.iter_mut()) {
            g.extend(media_seqs(&drain(r)));
        }
    }
    for g in &got {
        assert_eq!(*g, (0..100).collect::<Vec<_>>());
    }
    for r in &fast {
        assert_eq!((r.received(), r.dropped()), (100, 0));
    }
    // The slow reader (joined after the track, so told it outside its queue) holds the
    // first 8 units; the rest were dropped for it alone.
    let evs = drain(&mut slow);
    assert!(matches!(evs[0], ReaderEvent::TrackChanged(0, _)));
    assert_eq!(media_seqs(&evs), (0..8).collect::<Vec<_>>());
    assert_eq!(slow.dropped(), 92);
    let info = reg.find("s").unwrap();
    assert_eq!(info.tracks[0].packets, 100);
    assert_eq!(info.tracks[0].bytes, 16000);
    let slow_info = info.readers.iter().find(|r| r.id == slow.id()).unwrap();
    assert_eq!((slow_info.received, slow_info.dropped), (8, 92));
    assert_eq!(info.readers.len(), 11);
}

#[test]
fn track_change_survives_full_queue() {
    let reg = Registry::new(2);
    let p = reg.create("s", None).unwrap();
    let mut r = reg.subscribe("s", "rtmp").unwrap();
    let t = p.add_track(pcmu(Leg::Caller)).unwrap();
    p.publish(unit(t, 0));
    p.publish(unit(t, 1)); // queue full (track + unit 0), dropped
    let mut pcma = pcmu(Leg::Caller);
    pcma.codec = "PCMA".into();
    pcma.payload_type = 8;
    p.update_track(t, pcma.clone()).unwrap(); // does not fit: flagged
    let evs = drain(&mut r);
    // Resync comes first, then what was queued.
    assert_eq!(evs[0], ReaderEvent::TrackChanged(0, pcma.clone()));
    assert!(matches!(evs[1], ReaderEvent::TrackChanged(0, ref s) if s.codec == "PCMU"));
    assert_eq!(media_seqs(&evs), vec![0]);
    // A no-op update is not announced.
    p.update_track(t, pcma).unwrap();
    assert!(drain(&mut r).is_empty());
    assert!(matches!(
        p.update_track(5, pcmu(Leg::Caller)),
        Err(RegistryError::NoSuchTrack { track: 5, .. })
    ));
}

#[test]
fn late_joiner_is_told_tracks_first() {
    let reg = Registry::new(16);
    let p = reg.create("s", None).unwrap();
    let a = p.add_track(pcmu(Leg::Caller)).unwrap();
    let b = p.add_track(pcmu(Leg::Callee)).unwrap();
    p.publish(unit(a, 0));
    let mut r = reg.subscribe("s", "whep").unwrap();
    p.publish(unit(b, 1));
    let evs = drain(&mut r);
    assert_eq!(evs.len(), 3);
    assert_eq!(evs[0], ReaderEvent::TrackChanged(0, pcmu(Leg::Caller)));
    assert_eq!(evs[1], ReaderEvent::TrackChanged(1, pcmu(Leg::Callee)));
    assert_eq!(media_seqs(&evs), vec![1]);
}

#[test]
fn dropped_reader_unsubscribes() {
    let reg = Registry::new(4);
    let p = reg.create("s", None).unwrap();
    let r1 = reg.subscribe("s", "a").unwrap();
    let r2 = reg.subscribe("s", "b").unwrap();
    assert_eq!(p.readers().len(), 2);
    drop(r1);
    let readers = p.readers();
    assert_eq!(readers.len(), 1);
    assert_eq!(readers[0].id, r2.id());
    drop(r2);
    assert!(p.readers().is_empty());
    p.publish(unit(0, 0)); // no readers: fine
}

#[tokio::test]
async fn end_reaches_readers_after_queued_units() {
    let reg = Registry::new(16);
    let p = reg.create("s", Some("call-9".into())).unwrap();
    let t = p.add_track(pcmu(Leg::Callee)).unwrap();
    let mut readers: Vec<_> = (0..3).map(|_| reg.subscribe("s", "x").unwrap()).collect();
    let tasks: Vec<_> = readers
        .drain(..)
        .map(|mut r| {
            tokio::spawn(async move {
                let mut evs = Vec::new();
                while let Some(ev) = r.recv().await {
                    evs.push(ev);
                }
                evs
            })
        })
        .collect();
    for seq in 0..5 {
        p.publish(unit(t, seq));
    }
    p.end("BYE from callee");
    assert!(reg.find("s").is_none());
    assert!(matches!(
        reg.subscribe("s", "x"),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        p.add_track(pcmu(Leg::Caller)),
        Err(RegistryError::Ended(_))
    ));
    for t in tasks {
        let evs = t.await.unwrap();
        assert_eq!(media_seqs(&evs), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            evs.last(),
            Some(&ReaderEvent::Ended("BYE from callee".into()))
        );
    }
}

#[tokio::test]
async fn dropping_publisher_ends_stream() {
    let reg = Registry::new(4);
    let p = reg.create("s", None).unwrap();
    let mut r = reg.subscribe("s", "x").unwrap();
    let waiter = tokio::spawn(async move { (r.recv().await, r.recv().await) });
    tokio::task::yield_now().await;
    drop(p);
    let (first, second) = waiter.await.unwrap();
    assert_eq!(first, Some(ReaderEvent::Ended("publisher gone".into())));
    assert_eq!(second, None);
    assert!(reg.is_empty());
}

#[tokio::test]
async fn concurrent_readers_receive_everything_in_order() {
    let reg = Registry::new(1024);
    let p = Arc::new(reg.create("s", None).unwrap());
    let t = p.add_track(pcmu(Leg::Callee)).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut r = reg.subscribe("s", "x").unwrap();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                while let Some(ev) = r.recv().await {
                    if let ReaderEvent::Media(u) = ev {
                        seqs.push(u.seq);
                    }
                }
                (seqs, r.dropped())
            })
        })
        .collect();
    let pp = p.clone();
    std::thread::spawn(move || {
        for seq in 0..1000 {
            pp.publish(unit(t, seq));
        }
        pp.end("done");
    })
    .join()
    .unwrap();
    for t in tasks {
        let (seqs, dropped) = t.await.unwrap();
        assert_eq!(seqs.len() as u64 + dropped, 1000);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn stream_info_serialises_camel_case() {
    let reg = Registry::new(4);
    let p = reg.create("s", Some("c-1".into())).unwrap();
    let t = p.add_track(pcmu(Leg::Callee)).unwrap();
    p.record_rtp_stats(t, 3, 1.5);
    let _r = reg.subscribe("s", "recorder").unwrap();
    let v = serde_json::to_value(reg.find("s").unwrap()).unwrap();
    assert_eq!(v["callId"], "c-1");
    assert_eq!(v["status"], "PUBLISHING");
    assert!(v["createdAt"].as_u64().unwrap() > 1_600_000_000_000);
    let tr = &v["tracks"][0];
    assert_eq!(tr["clockRate"], 8000);
    assert_eq!(tr["payloadType"], 0);
    assert_eq!(tr["kind"], "audio");
    assert_eq!(tr["leg"], "callee");
    assert_eq!(tr["lost"], 3);
    assert_eq!(tr["jitter"], 1.5);
    assert_eq!(v["readers"][0]["kind"], "recorder");
    assert_eq!(reg.list().len(), 1);
}

#[test]
fn too_many_tracks() {
    let reg = Registry::new(4);
    let p = reg.create("s", None).unwrap();
    for _ in 0..MAX_TRACKS {
        p.add_track(pcmu(Leg::Mixed)).unwrap();
    }
    assert!(matches!(
        p.add_track(pcmu(Leg::Mixed)),
        Err(RegistryError::TooManyTracks { .. })
    ));
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Registry>();
    send_sync::<Publisher>();
    send::<Reader>();
    send::<MediaUnit>();
}

#[derive(Default)]
struct RecordingSink {
    tracks: parking_lot::Mutex<Vec<TrackId>>,
    seqs: parking_lot::Mutex<Vec<u16>>,
    ended: parking_lot::Mutex<Option<String>>,
    refuse: AtomicBool,
}

impl InlineSink for RecordingSink {
    fn on_track(&self, id: TrackId, _spec: &TrackSpec) {
        self.tracks.lock().push(id);
    }
    fn on_media(&self, unit: &MediaUnit) -> bool {
        if self.refuse.load(Ordering::Relaxed) {
            return false;
        }
        self.seqs.lock().push(unit.seq);
        true
    }
    fn on_end(&self, reason: &str) {
        *self.ended.lock() = Some(reason.to_owned());
    }
}

#[test]
fn inline_sinks_get_tracks_media_and_the_end_and_detach_on_drop() {
    let reg = Registry::new(4);
    let p = reg.create("inline", None).unwrap();
    let t = p.add_track(pcmu(Leg::Callee)).unwrap();
    let sink = Arc::new(RecordingSink::default());
    let handle = reg.attach("inline", "fork", sink.clone()).unwrap();
    assert_eq!(
        *sink.tracks.lock(),
        vec![t],
        "current tracks replayed at attach"
    );
    for seq in 0..10 {
        p.publish(unit(t, seq));
    }
    assert_eq!(
        *sink.seqs.lock(),
        (0..10).collect::<Vec<_>>(),
        "no queue: nothing is lost"
    );
    sink.refuse.store(true, Ordering::Relaxed);
    p.publish(unit(t, 10));
    assert_eq!((handle.received(), handle.dropped()), (10, 1));
    let info = reg.find("inline").unwrap();
    assert_eq!(info.readers.len(), 1);
    assert_eq!(info.readers[0].kind, "fork");
    drop(handle);
    assert!(reg.find("inline").unwrap().readers.is_empty());
    let again = reg.attach("inline", "fork", sink.clone()).unwrap();
    p.end("bye");
    assert_eq!(sink.ended.lock().as_deref(), Some("bye"));
    drop(again);
    assert!(matches!(
        reg.attach("inline", "fork", sink),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn totals_only_grow_as_streams_end_and_readers_leave() {
    let reg = Registry::new(2);
    let p = reg.create("t1", None).unwrap();
    let a = p.add_track(pcmu(Leg::Callee)).unwrap();
    let mut fast = reg.subscribe("t1", "recorder").unwrap();
    let slow = reg.subscribe("t1", "whep").unwrap();
    for seq in 0..5 {
        p.publish(unit(a, seq));
        drain(&mut fast);
    }
    p.record_rtp_stats(a, 3, 1.5);
    let t = reg.totals();
    assert_eq!(t.streams, 1);
    assert_eq!((t.audio.packets, t.audio.bytes, t.audio.lost), (5, 800, 3));
    assert_eq!(t.video, KindTotals::default());
    // The whep reader never read: its queue of 2 took 2 and lost the other 3.
    assert_eq!(
        t.readers["whep"],
        ReaderTotals {
            live: 1,
            received: 0,
            dropped: 3
        }
    );
    assert_eq!(t.readers["recorder"].received, 5);
    // A reader leaves: what it counted stays, it is no longer live.
    drop(slow);
    let after_leave = reg.totals();
    assert_eq!(after_leave.readers["whep"].dropped, 3);
    assert_eq!(after_leave.readers["whep"].live, 0);
    // The stream ends: its packets stay in the totals, a new stream adds to them.
    p.end("done");
    drop(fast);
    let after_end = reg.totals();
    assert_eq!(after_end.audio.packets, 5);
    assert_eq!(after_end.readers["recorder"].received, 5);
    let p2 = reg.create("t1", None).unwrap();
    let b = p2.add_track(pcmu(Leg::Caller)).unwrap();
    p2.publish(unit(b, 0));
    let t2 = reg.totals();
    assert_eq!((t2.streams, t2.audio.packets), (2, 6));
}

#[test]
fn readers_besides_the_gateways_own_are_told_apart_and_leave_with_their_reader() {
    let reg = Registry::new(8);
    let p = reg.create("s", None).unwrap();
    let own = ["mixer", "bridge"];
    assert!(!p.has_readers_besides(&own), "no reader at all");
    let mixer = reg.subscribe("s", "mixer").unwrap();
    assert!(!p.has_readers_besides(&own), "only our own");
    let recorder = reg.subscribe("s", "recorder").unwrap();
    assert!(p.has_readers_besides(&own));
    drop(recorder);
    assert!(!p.has_readers_besides(&own), "the recorder left");
    drop(mixer);
}
