//! FLV tag bodies (the payload of RTMP audio and video messages), per Adobe's FLV spec v10.1
//! §E.4.2 (audio) and §E.4.3 (video) and ISO 14496-15 §5.2.4.1 (AVCDecoderConfigurationRecord).
//!
//! Pure byte builders: no timing, no I/O. The muxer decides when each tag is sent.

use bytes::{BufMut, Bytes, BytesMut};

/// FLV SoundFormat 10: AAC. Header byte: format 10, rate 3 (AAC always says 44 kHz: the real
/// rate is in the AudioSpecificConfig), 16-bit, "stereo" (AAC always sets it, §E.4.2.1).
pub const AAC_HEADER: u8 = (10 << 4) | (3 << 2) | (1 << 1) | 1;
/// FLV SoundFormat 7: G.711 A-law, 8 kHz mono (the rate field is ignored for G.711).
pub const PCMA_HEADER: u8 = (7 << 4) | (1 << 1);
/// FLV SoundFormat 8: G.711 μ-law, 8 kHz mono.
pub const PCMU_HEADER: u8 = (8 << 4) | (1 << 1);
/// onMetaData `audiocodecid` values.
pub const AUDIO_CODEC_AAC: u32 = 10;
pub const AUDIO_CODEC_PCMA: u32 = 7;
pub const AUDIO_CODEC_PCMU: u32 = 8;
/// onMetaData `videocodecid` of AVC.
pub const VIDEO_CODEC_AVC: u32 = 7;

/// AAC sequence header: `AudioSpecificConfig` (§E.4.2.2, AACPacketType 0).
pub fn aac_sequence_header(asc: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + asc.len());
    b.put_u8(AAC_HEADER);
    b.put_u8(0);
    b.put_slice(asc);
    b.freeze()
}

/// One raw AAC frame (`raw_data_block`, no ADTS header; AACPacketType 1).
pub fn aac_frame(raw: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + raw.len());
    b.put_u8(AAC_HEADER);
    b.put_u8(1);
    b.put_slice(raw);
    b.freeze()
}

/// G.711 samples as they came in RTP, behind the one-byte audio header.
pub fn g711_frame(alaw: bool, samples: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + samples.len());
    b.put_u8(if alaw { PCMA_HEADER } else { PCMU_HEADER });
    b.put_slice(samples);
    b.freeze()
}

/// AVC sequence header: an AVCDecoderConfigurationRecord with one SPS and one PPS.
/// `None` when the SPS is too short to carry profile and level.
pub fn avc_sequence_header(sps: &[u8], pps: &[u8]) -> Option<Bytes> {
    if sps.len() < 4 || pps.is_empty() || sps.len() > 0xFFFF || pps.len() > 0xFFFF {
        return None;
    }
    let mut b = BytesMut::with_capacity(16 + sps.len() + pps.len());
    // Frame type 1 (key), codec 7 (AVC); AVCPacketType 0; composition time 0.
    b.put_u8(0x17);
    b.put_u8(0);
    b.put_slice(&[0, 0, 0]);
    b.put_u8(1); // configurationVersion
    b.put_u8(sps[1]); // AVCProfileIndication
    b.put_u8(sps[2]); // profile_compatibility
    b.put_u8(sps[3]); // AVCLevelIndication
    b.put_u8(0xFC | 3); // lengthSizeMinusOne = 3: four-byte NALU lengths
    b.put_u8(0xE0 | 1); // one SPS
    b.put_u16(sps.len() as u16);
    b.put_slice(sps);
    b.put_u8(1); // one PPS
    b.put_u16(pps.len() as u16);
    b.put_slice(pps);
    Some(b.freeze())
}

/// One access unit as an AVC NALU tag: each NAL unit behind its 4-byte length (AVCC form),
/// composition time 0 (RTP from a SIP peer carries no B-frame reordering we could know of).
pub fn avc_frame<'a>(keyframe: bool, nalus: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(if keyframe { 0x17 } else { 0x27 });
    b.put_u8(1);
    b.put_slice(&[0, 0, 0]);
    for n in nalus {
        b.put_u32(n.len() as u32);
        b.put_slice(n);
    }
    b.freeze()
}

/// End of sequence (AVCPacketType 2), sent before a publisher stops so players flush.
pub fn avc_end_of_sequence() -> Bytes {
    Bytes::from_static(&[0x17, 2, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_headers_match_the_spec() {
        assert_eq!(AAC_HEADER, 0xAF);
        assert_eq!(PCMA_HEADER, 0x72);
        assert_eq!(PCMU_HEADER, 0x82);
        assert_eq!(
            &aac_sequence_header(&[0x11, 0x88])[..],
            &[0xAF, 0, 0x11, 0x88]
        );
        assert_eq!(&aac_frame(&[1, 2])[..], &[0xAF, 1, 1, 2]);
        assert_eq!(&g711_frame(false, &[0xFF])[..], &[0x82, 0xFF]);
    }

    #[test]
    fn avc_records() {
        let sps = [0x67, 0x42, 0xC0, 0x1E, 0xAA];
        let pps = [0x68, 0xCE, 0x3C, 0x80];
        let h = avc_sequence_header(&sps, &pps).unwrap();
        assert_eq!(
            &h[..],
            &[
                0x17, 0, 0, 0, 0, 1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, 5, 0x67, 0x42, 0xC0, 0x1E,
                0xAA, 1, 0, 4, 0x68, 0xCE, 0x3C, 0x80
            ]
        );
        assert!(avc_sequence_header(&[0x67, 1], &pps).is_none());
        let f = avc_frame(false, [&[0x41u8, 9][..], &[0x41, 8, 7][..]]);
        assert_eq!(
            &f[..],
            &[0x27, 1, 0, 0, 0, 0, 0, 0, 2, 0x41, 9, 0, 0, 0, 3, 0x41, 8, 7]
        );
    }
}
