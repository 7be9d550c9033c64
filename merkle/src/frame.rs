//! CRC32C wire frames.
//!
//! A frame is an 8-byte header followed by the payload. The header is the
//! payload length as `u32` little-endian, then CRC32C (Castagnoli) of the
//! payload as `u32` little-endian. The CRC catches transport corruption only;
//! authenticity comes from BLAKE3 against the Merkle leaf.

/// Length of a frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 8;

/// A malformed frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces a payload longer than the receiver accepts.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Announced payload length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// The payload does not match the CRC32C of the header.
    #[error("frame CRC32C mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadCrc {
        /// CRC32C from the header.
        expected: u32,
        /// CRC32C of the payload received.
        actual: u32,
    },
}

/// The header for `payload`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes.
pub fn frame_header(payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let len = u32::try_from(payload.len()).expect("frame payload longer than u32::MAX");
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h
}

/// The header of a frame whose payload is `tag` followed by `body`, without
/// joining them (a chunk's bytes need not be copied behind their tag).
///
/// # Panics
/// If the payload is longer than `u32::MAX` bytes.
pub fn frame_header_parts(tag: u8, body: &[u8]) -> [u8; FRAME_HEADER_LEN] {
    let len = u32::try_from(1 + body.len()).expect("frame payload longer than u32::MAX");
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&crc32c::crc32c_append(crc32c::crc32c(&[tag]), body).to_le_bytes());
    h
}

/// [`check_frame_crc`] of the payload `tag` followed by `body`.
pub fn check_frame_crc_parts(crc: u32, tag: u8, body: &[u8]) -> Result<(), FrameError> {
    let actual = crc32c::crc32c_append(crc32c::crc32c(&[tag]), body);
    if actual != crc {
        return Err(FrameError::BadCrc {
            expected: crc,
            actual,
        });
    }
    Ok(())
}

/// Header followed by `payload`.
///
/// # Panics
/// If `payload` is longer than `u32::MAX` bytes.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&frame_header(payload));
    out.extend_from_slice(payload);
    out
}

/// Parses a header into `(payload length, crc)`; [`FrameError::TooLong`] if
/// the length exceeds `max_len`.
pub fn parse_frame_header(
    header: &[u8; FRAME_HEADER_LEN],
    max_len: u32,
) -> Result<(u32, u32), FrameError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > max_len {
        return Err(FrameError::TooLong { len, max: max_len });
    }
    Ok((len, crc))
}

/// Checks `payload` against the CRC32C `crc` from its header.
pub fn check_frame_crc(crc: u32, payload: &[u8]) -> Result<(), FrameError> {
    let actual = crc32c::crc32c(payload);
    if actual != crc {
        return Err(FrameError::BadCrc {
            expected: crc,
            actual,
        });
    }
    Ok(())
}

/// Decodes one frame from the front of `buf`: `Ok(None)` if `buf` does not yet
/// hold a whole frame, `Ok(Some((payload, consumed)))` otherwise. A header
/// over `max_len` is rejected as soon as the header is complete.
pub fn decode_frame(buf: &[u8], max_len: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<FRAME_HEADER_LEN>() else {
        return Ok(None);
    };
    let (len, crc) = parse_frame_header(header, max_len)?;
    let Some(payload) = rest.get(..len as usize) else {
        return Ok(None);
    };
    check_frame_crc(crc, payload)?;
    Ok(Some((payload, FRAME_HEADER_LEN + payload.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_known_crc() {
        // CRC32C("123456789") = 0xE3069283 (the standard check value).
        let f = encode_frame(b"123456789");
        assert_eq!(&f[..4], &9u32.to_le_bytes());
        assert_eq!(&f[4..8], &0xE306_9283u32.to_le_bytes());
        assert_eq!(decode_frame(&f, 100), Ok(Some((&b"123456789"[..], 17))));
        assert_eq!(decode_frame(&f[..16], 100), Ok(None));
        assert_eq!(decode_frame(&f[..7], 100), Ok(None));
        assert_eq!(
            decode_frame(&f, 8),
            Err(FrameError::TooLong { len: 9, max: 8 })
        );
        let empty = encode_frame(b"");
        assert_eq!(decode_frame(&empty, 0), Ok(Some((&b""[..], 8))));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut buf = encode_frame(b"one");
        buf.extend(encode_frame(b"three"));
        let (p, n) = decode_frame(&buf, 10).unwrap().unwrap();
        assert_eq!(p, b"one");
        let (p2, n2) = decode_frame(&buf[n..], 10).unwrap().unwrap();
        assert_eq!(p2, b"three");
        assert_eq!(n + n2, buf.len());
    }

    #[test]
    fn flipped_bit_is_detected() {
        let mut f = encode_frame(b"hello world");
        f[10] ^= 0x04;
        assert!(matches!(
            decode_frame(&f, 100),
            Err(FrameError::BadCrc { .. })
        ));
    }
}
