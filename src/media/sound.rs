//! Sound files for `/call/inject_sound`: WAV, MP3 and Ogg Opus, told apart by their first
//! bytes (not by file name or Content-Type) and decoded to 8 kHz mono, the players' rate.
//!
//! Owns format detection, the Ogg paging and OpusHead of Ogg Opus (RFC 7845), and the cap on
//! decoded length; WAV is [`super::wav`]'s, MP3 frames are symphonia's, Opus packets libopus's.
//! The bytes come from users and URLs: whatever they hold gives samples or an error saying
//! what is wrong, never a panic.

use std::io::Cursor;

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::default::codecs::MpaDecoder;
use symphonia::default::formats::MpaReader;

use super::opus::packet_samples_48k;
use super::resample::PcmResampler;

/// Output sample rate.
const RATE: u32 = 8000;
/// Decoded sounds are capped at an hour: within the 50 MiB input cap a very compressed file
/// (an 8 kbit/s MP3, a 6 kbit/s Opus) would otherwise expand to gigabytes of samples.
pub const MAX_SECONDS: usize = 3600;
const MAX_SAMPLES: usize = MAX_SECONDS * RATE as usize;

/// 8 kHz mono samples of a WAV, MP3 or Ogg Opus file.
pub fn decode_8k_mono(data: &[u8]) -> Result<Vec<i16>, String> {
    let pcm = if data.len() >= 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WAVE" {
        super::wav::read_8k_mono(data)?
    } else if data.starts_with(b"OggS") {
        ogg_opus(data)?
    } else if let Some(frames) = mp3_frames(data)? {
        mp3(frames)?
    } else {
        return Err("not a WAV, MP3 or Ogg Opus file".into());
    };
    if pcm.len() > MAX_SAMPLES {
        return Err(too_long());
    }
    if pcm.is_empty() {
        return Err("no audio in the file".into());
    }
    Ok(pcm)
}

fn too_long() -> String {
    format!("longer than {} minutes", MAX_SECONDS / 60)
}

/// Mono samples at any rate in, 8 kHz out, stopping at [`MAX_SAMPLES`].
struct To8k {
    rate: u32,
    resampler: Option<PcmResampler>,
    out: Vec<i16>,
}

impl To8k {
    fn new() -> Self {
        Self {
            rate: RATE,
            resampler: None,
            out: Vec::new(),
        }
    }

    fn push(&mut self, rate: u32, mono: &[i16]) -> Result<(), String> {
        // MPEG frames each carry their rate, so a stream may change it; a fresh filter then.
        if rate != self.rate {
            self.resampler = match rate {
                RATE => None,
                _ => Some(
                    PcmResampler::new(rate, RATE)
                        .ok_or_else(|| format!("sample rate {rate} Hz"))?,
                ),
            };
            self.rate = rate;
        }
        match &mut self.resampler {
            Some(r) => r.process(mono, &mut self.out),
            None => self.out.extend_from_slice(mono),
        }
        if self.out.len() > MAX_SAMPLES {
            return Err(too_long());
        }
        Ok(())
    }
}

/// The mean of each frame's channels, times `gain`, into `out`.
fn downmix(interleaved: &[i16], channels: usize, gain: f32, out: &mut Vec<i16>) {
    out.clear();
    let channels = channels.max(1);
    out.extend(interleaved.chunks_exact(channels).map(|f| {
        let sum: i32 = f.iter().map(|&s| i32::from(s)).sum();
        (sum as f32 / channels as f32 * gain).clamp(-32768.0, 32767.0) as i16
    }));
}

/// The MPEG audio after an ID3v2 tag, if the file is an MP3: it starts with an ID3 tag or
/// with a Layer III frame header. `None` when it is neither.
fn mp3_frames(data: &[u8]) -> Result<Option<&[u8]>, String> {
    if data.starts_with(b"ID3") {
        let header = data
            .get(..10)
            .ok_or("MP3: the file ends inside its ID3 tag (truncated?)")?;
        let size = &header[6..10];
        if size.iter().any(|b| b & 0x80 != 0) {
            return Err("MP3: damaged ID3 tag header".into());
        }
        let size = size.iter().fold(0usize, |n, b| (n << 7) | usize::from(*b));
        // Flag 0x10: a 10-byte footer follows the tag.
        let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
        let frames = data
            .get(10 + size + footer..)
            .filter(|f| !f.is_empty())
            .ok_or("MP3: the file ends inside its ID3 tag (truncated?)")?;
        // An ID3 tag may precede other formats too; the MPEG reader below says if no frame
        // follows.
        return Ok(Some(frames));
    }
    // A frame header: sync, an MPEG version and sample rate index that are not reserved,
    // Layer III, a bitrate index that is not the invalid one.
    let layer3 = matches!(data, [0xFF, b1, b2, ..]
        if b1 & 0xE0 == 0xE0
            && (b1 >> 3) & 3 != 1
            && (b2 >> 2) & 3 != 3
            && (b1 >> 1) & 3 == 1
            && b2 >> 4 != 15);
    Ok(layer3.then_some(data))
}

fn mp3_error(e: SymError) -> String {
    match e {
        SymError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "MP3: no complete MPEG audio frame (truncated file?)".into()
        }
        e => format!("MP3: {e}"),
    }
}

fn mp3(frames: &[u8]) -> Result<Vec<i16>, String> {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(frames)), Default::default());
    let mut reader = MpaReader::try_new(mss, FormatOptions::default()).map_err(mp3_error)?;
    let params = reader
        .tracks()
        .first()
        .and_then(|t| t.codec_params.as_ref())
        .and_then(|p| p.audio())
        .ok_or("MP3: no audio track")?
        .clone();
    let mut decoder =
        MpaDecoder::try_new(&params, &AudioDecoderOptions::default()).map_err(mp3_error)?;
    let mut sink = To8k::new();
    let (mut interleaved, mut mono) = (Vec::<i16>::new(), Vec::new());
    let (mut good, mut damaged) = (0usize, None);
    // MPEG streams have no defined end: the reader stops where frames stop, so a file cut
    // short plays up to the cut, as in players.
    while let Some(packet) = reader.next_packet().map_err(mp3_error)? {
        match decoder.decode(&packet) {
            Ok(buf) => {
                let (rate, channels) = (buf.spec().rate(), buf.spec().channels().count());
                buf.copy_to_vec_interleaved(&mut interleaved);
                downmix(&interleaved, channels, 1.0, &mut mono);
                sink.push(rate, &mono)?;
                good += 1;
            }
            // A damaged frame is skipped, as players do.
            Err(SymError::DecodeError(e)) => {
                damaged.get_or_insert(e);
            }
            Err(e) => return Err(mp3_error(e)),
        }
    }
    match (good, damaged) {
        (0, Some(e)) => Err(format!("MP3: no frame could be decoded ({e})")),
        _ => Ok(sink.out),
    }
}

/// One Ogg page (RFC 3533 §6).
struct Page<'a> {
    flags: u8,
    granule: u64,
    serial: u32,
    lacing: &'a [u8],
    body: &'a [u8],
}

const BOS: u8 = 0x02;
const EOS: u8 = 0x04;

/// The page at `pos` and where the next one starts.
fn ogg_page(data: &[u8], pos: usize) -> Result<(Page<'_>, usize), String> {
    let cut = || format!("Ogg: the page at byte {pos} is cut short (truncated file?)");
    let rest = data.get(pos..).unwrap_or_default();
    if !rest.starts_with(b"OggS") {
        return Err(format!("Ogg: no page at byte {pos} (damaged file?)"));
    }
    let header = rest.get(..27).ok_or_else(cut)?;
    if header[4] != 0 {
        return Err(format!("Ogg: unknown page version {}", header[4]));
    }
    let le = |r: std::ops::Range<usize>| {
        header[r]
            .iter()
            .rev()
            .fold(0u64, |n, b| (n << 8) | u64::from(*b))
    };
    let segments = usize::from(header[26]);
    let lacing = rest.get(27..27 + segments).ok_or_else(cut)?;
    let len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
    let body = rest
        .get(27 + segments..27 + segments + len)
        .ok_or_else(cut)?;
    let page = Page {
        flags: header[5],
        granule: le(6..14),
        serial: le(14..18) as u32,
        lacing,
        body,
    };
    Ok((page, pos + 27 + segments + len))
}

/// The Opus stream of an Ogg file: its packets, and the granule position of its last page
/// (the 48 kHz samples up to the end, pre-skip included).
struct OggStream {
    packets: Vec<Vec<u8>>,
    last_granule: Option<u64>,
}

/// What codec an Ogg stream's first packet announces.
fn ogg_codec(first: &[u8]) -> &'static str {
    [
        (&b"\x01vorbis"[..], "Vorbis"),
        (b"\x7fFLAC", "FLAC"),
        (b"Speex   ", "Speex"),
        (b"\x80theora", "Theora"),
    ]
    .iter()
    .find(|(magic, _)| first.starts_with(magic))
    .map_or("an unknown codec", |(_, name)| name)
}

fn ogg_opus_stream(data: &[u8]) -> Result<OggStream, String> {
    let mut serial = None;
    let mut other = None;
    let mut stream = OggStream {
        packets: Vec::new(),
        last_granule: None,
    };
    let mut partial: Vec<u8> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let (page, next) = ogg_page(data, pos)?;
        pos = next;
        // The first page of each multiplexed stream comes before any other page: pick the
        // first that begins with an OpusHead.
        if serial.is_none() {
            if page.flags & BOS == 0 {
                break;
            }
            if page.body.starts_with(b"OpusHead") {
                serial = Some(page.serial);
            } else {
                other.get_or_insert(ogg_codec(page.body));
                continue;
            }
        }
        if serial != Some(page.serial) {
            continue;
        }
        let mut at = 0;
        for &l in page.lacing {
            let l = usize::from(l);
            partial.extend_from_slice(&page.body[at..at + l]);
            at += l;
            // A lacing value below 255 ends a packet; 255 continues it.
            if l < 255 {
                stream.packets.push(std::mem::take(&mut partial));
            }
        }
        if page.granule != u64::MAX {
            stream.last_granule = Some(page.granule);
        }
        if page.flags & EOS != 0 {
            break;
        }
    }
    if serial.is_none() {
        return Err(match other {
            Some(codec) => format!("Ogg stream is {codec}, not Opus"),
            None => "Ogg: no stream begins in the file".into(),
        });
    }
    if !partial.is_empty() {
        return Err("Ogg: the file ends inside a packet (truncated?)".into());
    }
    Ok(stream)
}

fn ogg_opus(data: &[u8]) -> Result<Vec<i16>, String> {
    let stream = ogg_opus_stream(data)?;
    let mut packets = stream.packets.iter();
    // RFC 7845 §5.1: the identification header.
    let head = packets.next().map_or(&[][..], Vec::as_slice);
    if head.len() < 19 {
        return Err("Ogg Opus: OpusHead too short".into());
    }
    if head[8] >> 4 != 0 {
        return Err(format!(
            "Ogg Opus: OpusHead version {} not supported",
            head[8]
        ));
    }
    let channels = usize::from(head[9]);
    let pre_skip = usize::from(u16::from_le_bytes([head[10], head[11]]));
    let gain_q8 = i16::from_le_bytes([head[16], head[17]]);
    let family = head[18];
    let layout = match (family, channels) {
        (0, 1) => ::opus::Channels::Mono,
        (0, 2) => ::opus::Channels::Stereo,
        _ => {
            return Err(format!(
                "Ogg Opus: {channels} channels in mapping family {family}; only mono and stereo are played"
            ))
        }
    };
    if !packets.next().is_some_and(|t| t.starts_with(b"OpusTags")) {
        return Err("Ogg Opus: no OpusTags after the OpusHead".into());
    }
    // The output gain is in Q7.8 dB; RFC 7845 asks players to apply it.
    let gain = 10f32.powf(f32::from(gain_q8) / (20.0 * 256.0));
    let mut decoder = ::opus::Decoder::new(48000, layout).map_err(|e| format!("Opus: {e}"))?;
    // What to drop at the start (the encoder's lookahead) and keep in all (the last page's
    // granule position counts the pre-skip too; it ends the stream mid-packet).
    let mut skip = pre_skip;
    let mut keep = stream
        .last_granule
        .map_or(u64::MAX, |g| g.saturating_sub(pre_skip as u64));
    let mut sink = To8k::new();
    let (mut buf, mut mono) = (Vec::<i16>::new(), Vec::new());
    for (n, packet) in packets.enumerate() {
        // Zero-length packets carry nothing (a lost packet to a live decoder).
        if packet.is_empty() {
            continue;
        }
        let number = n + 3;
        let samples = packet_samples_48k(packet)
            .ok_or_else(|| format!("Ogg Opus: packet {number} is malformed"))?;
        buf.resize(samples as usize * channels, 0);
        let got = decoder
            .decode(packet, &mut buf, false)
            .map_err(|e| format!("Ogg Opus: packet {number}: {e}"))?;
        downmix(
            &buf[..(got * channels).min(buf.len())],
            channels,
            gain,
            &mut mono,
        );
        let from = skip.min(mono.len());
        skip -= from;
        let take = (mono.len() - from).min(usize::try_from(keep).unwrap_or(usize::MAX));
        keep -= take as u64;
        sink.push(48000, &mono[from..from + take])?;
        if keep == 0 {
            break;
        }
    }
    Ok(sink.out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::media::transcode::tests::share_at;

    /// A 1 s sine of `hz` encoded by ffmpeg with `args` (codec, rate, channels) into `name`.
    fn ffmpeg(dir: &Path, name: &str, hz: u32, args: &[&str]) -> Vec<u8> {
        let path = dir.join(name);
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("sine=frequency={hz}:duration=1"))
            .args(args)
            .arg(&path)
            .output()
            .expect("ffmpeg is not installed: run scripts/deps.sh test");
        assert!(
            out.status.success(),
            "ffmpeg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(path).unwrap()
    }

    /// 1 s of `hz`: 8000 samples ±5 % (`slack` more allowed), nearly all power at `hz`.
    fn check_tone(pcm: &[i16], hz: f64, slack: usize) {
        assert!(
            (7600..=8400 + slack).contains(&pcm.len()),
            "1 s = 8000 samples: {}",
            pcm.len()
        );
        let share = share_at(pcm, 8000, hz);
        assert!(share > 0.9, "{hz} Hz share {share}");
    }

    #[test]
    fn mp3_and_ogg_opus_decode_to_8k_mono_at_their_frequency() {
        let dir = tempfile::tempdir().unwrap();
        let mp3 = ffmpeg(dir.path(), "a.mp3", 1000, &["-ar", "44100", "-ac", "2"]);
        check_tone(&decode_8k_mono(&mp3).unwrap(), 1000.0, 0);
        // No ID3 tag: the file starts with a frame header.
        let bare = ffmpeg(
            dir.path(),
            "b.mp3",
            700,
            &[
                "-ar",
                "16000",
                "-ac",
                "1",
                "-id3v2_version",
                "0",
                "-write_xing",
                "0",
            ],
        );
        assert_eq!(bare[0], 0xFF);
        // Without a LAME tag the encoder's delay and padding are not known, so they play.
        check_tone(&decode_8k_mono(&bare).unwrap(), 700.0, 1152);
        let opus = ffmpeg(dir.path(), "c.opus", 440, &["-ac", "2", "-c:a", "libopus"]);
        check_tone(&decode_8k_mono(&opus).unwrap(), 440.0, 0);
        let mono = ffmpeg(dir.path(), "d.ogg", 1000, &["-ac", "1", "-c:a", "libopus"]);
        check_tone(&decode_8k_mono(&mono).unwrap(), 1000.0, 0);
        let wav = ffmpeg(
            dir.path(),
            "e.wav",
            1000,
            &["-ar", "22050", "-c:a", "pcm_s16le"],
        );
        check_tone(&decode_8k_mono(&wav).unwrap(), 1000.0, 0);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let err = |data: &[u8]| decode_8k_mono(data).unwrap_err();
        for junk in [
            &b""[..],
            b"hello world",
            b"\xFF",
            b"RIFF",
            b"fLaC\0\0\0\x22",
        ] {
            assert_eq!(err(junk), "not a WAV, MP3 or Ogg Opus file");
        }
        let vorbis = ffmpeg(dir.path(), "v.ogg", 1000, &["-c:a", "libvorbis"]);
        assert_eq!(err(&vorbis), "Ogg stream is Vorbis, not Opus");

        let opus = ffmpeg(dir.path(), "a.opus", 1000, &["-c:a", "libopus"]);
        let e = err(&opus[..opus.len() / 2]);
        assert!(e.contains("truncated"), "{e}");
        assert!(err(&opus[..10]).contains("cut short"));

        let mp3 = ffmpeg(dir.path(), "a.mp3", 1000, &[]);
        assert!(err(&mp3[..5]).contains("ID3"), "{}", err(&mp3[..5]));
        let id3_only = mp3_frames(&mp3).unwrap().map_or(0, |f| mp3.len() - f.len());
        let e = err(&mp3[..id3_only + 20]);
        assert!(e.contains("truncated"), "{e}");
        // Cut in the middle, an MP3 plays up to the cut.
        let half = decode_8k_mono(&mp3[..mp3.len() / 2]).unwrap();
        assert!((3000..5000).contains(&half.len()), "{}", half.len());

        // Every prefix and a byte flipped anywhere: an answer, never a panic.
        for data in [&opus, &mp3] {
            for n in (0..data.len()).step_by(97) {
                let _ = decode_8k_mono(&data[..n]);
                let mut d = data.clone();
                d[n] = d[n].wrapping_add(0x55);
                let _ = decode_8k_mono(&d);
            }
        }
    }

    #[test]
    fn an_hour_is_the_most_decoded() {
        let mut sink = To8k::new();
        let second = vec![0i16; 8000];
        for _ in 0..MAX_SECONDS {
            sink.push(8000, &second).unwrap();
        }
        assert_eq!(sink.push(8000, &[0]).unwrap_err(), "longer than 60 minutes");
    }
}
