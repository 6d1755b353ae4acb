//! The spool's on-disk format: checksummed, length-prefixed frames, each holding one Kafka record.
//!
//! Frame: `MAGIC (4) | payload length u32 LE (4) | CRC-32 of length and payload u32 LE (4) | payload`.
//! Payload: `topic (u16 len) | key (u32 len) | value (u32 len) | header count u16 | (name u16 len, value u32 len)*`.

/// Marks the start of every frame, so that recovery can find the next record after a corrupt one.
pub const MAGIC: [u8; 4] = *b"IMCF";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted; a bigger length field is corruption.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// One Kafka record as kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    /// Destination topic.
    pub topic: String,
    /// Record key.
    pub key: Vec<u8>,
    /// Record value.
    pub value: Vec<u8>,
    /// Record headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A record that cannot be stored (a part too long for its length field).
#[derive(Debug, thiserror::Error)]
#[error("record too large for the spool")]
pub struct TooLarge;

fn put_u16(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), TooLarge> {
    let len = u16::try_from(bytes.len()).map_err(|_| TooLarge)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), TooLarge> {
    let len = u32::try_from(bytes.len()).map_err(|_| TooLarge)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The length of the frame [`encode`] makes of this record.
pub fn encoded_len<'a>(
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> usize {
    let headers: usize = headers.map(|(name, value)| 2 + name.len() + 4 + value.len()).sum();
    HEADER_LEN + 2 + topic.len() + 4 + key.len() + 4 + value.len() + 2 + headers
}

/// Encodes one record as a complete frame.
pub fn encode<'a>(
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Vec<u8>, TooLarge> {
    let mut frame = Vec::with_capacity(HEADER_LEN + 16 + topic.len() + key.len() + value.len() + 256);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&[0; 8]);
    put_u16(&mut frame, topic.as_bytes())?;
    put_u32(&mut frame, key)?;
    put_u32(&mut frame, value)?;
    let count = u16::try_from(headers.len()).map_err(|_| TooLarge)?;
    frame.extend_from_slice(&count.to_le_bytes());
    for (name, value) in headers {
        put_u16(&mut frame, name.as_bytes())?;
        put_u32(&mut frame, value)?;
    }
    let payload_len = frame.len() - HEADER_LEN;
    if payload_len > MAX_PAYLOAD {
        return Err(TooLarge);
    }
    frame[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    let crc = checksum(&frame[4..8], &frame[HEADER_LEN..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

fn checksum(length: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length);
    hasher.update(payload);
    hasher.finalize()
}

/// What lies at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A valid frame of this many bytes.
    Frame(usize),
    /// The data ends inside a frame: a write torn by a crash.
    Torn,
    /// Not a valid frame: wrong magic, impossible length or checksum mismatch.
    Corrupt,
}

/// Checks the frame starting at `data[0]`.
pub fn scan(data: &[u8]) -> Scan {
    if data.len() < HEADER_LEN {
        return if MAGIC.starts_with(&data[..data.len().min(4)]) { Scan::Torn } else { Scan::Corrupt };
    }
    if data[..4] != MAGIC {
        return Scan::Corrupt;
    }
    let payload_len = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    if payload_len > MAX_PAYLOAD {
        return Scan::Corrupt;
    }
    let Some(payload) = data.get(HEADER_LEN..HEADER_LEN + payload_len) else {
        return Scan::Torn;
    };
    let crc = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
    if checksum(&data[4..8], payload) != crc || decode_payload(payload).is_none() {
        return Scan::Corrupt;
    }
    Scan::Frame(HEADER_LEN + payload_len)
}

/// Decodes a frame that [`scan`] found valid.
pub fn decode(frame: &[u8]) -> Option<SpooledRecord> {
    decode_payload(frame.get(HEADER_LEN..)?)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }
    fn u16_bytes(&mut self) -> Option<&'a [u8]> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        self.take(len)
    }
    fn u32_bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(len)
    }
}

fn decode_payload(payload: &[u8]) -> Option<SpooledRecord> {
    let mut reader = Reader(payload);
    let topic = String::from_utf8(reader.u16_bytes()?.to_vec()).ok()?;
    let key = reader.u32_bytes()?.to_vec();
    let value = reader.u32_bytes()?.to_vec();
    let count = u16::from_le_bytes(reader.take(2)?.try_into().ok()?);
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = String::from_utf8(reader.u16_bytes()?.to_vec()).ok()?;
        headers.push((name, reader.u32_bytes()?.to_vec()));
    }
    reader.0.is_empty().then_some(SpooledRecord { topic, key, value, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let headers: [(&str, &[u8]); 2] = [("event_id", b"abc"), ("schema", b"v1")];
        encode("topic", b"@TGS#1", br#"{"a":1}"#, headers.into_iter()).unwrap()
    }

    #[test]
    fn round_trips() {
        let frame = sample();
        assert_eq!(scan(&frame), Scan::Frame(frame.len()));
        let record = decode(&frame).unwrap();
        assert_eq!(record.topic, "topic");
        assert_eq!(record.key, b"@TGS#1");
        assert_eq!(record.value, br#"{"a":1}"#);
        assert_eq!(record.headers, vec![("event_id".into(), b"abc".to_vec()), ("schema".into(), b"v1".to_vec())]);
    }

    #[test]
    fn encoded_len_is_the_length_of_the_frame() {
        let headers: [(&str, &[u8]); 2] = [("event_id", b"abc"), ("schema", b"v1")];
        assert_eq!(encoded_len("topic", b"@TGS#1", br#"{"a":1}"#, headers.into_iter()), sample().len());
        assert_eq!(
            encoded_len("", b"", b"", std::iter::empty()),
            encode("", b"", b"", std::iter::empty()).unwrap().len()
        );
    }

    #[test]
    fn every_truncation_is_torn() {
        let frame = sample();
        for cut in 1..frame.len() {
            assert_eq!(scan(&frame[..cut]), Scan::Torn, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let frame = sample();
        for at in 0..frame.len() {
            let mut bad = frame.clone();
            bad[at] ^= 0x40;
            assert_ne!(scan(&bad), Scan::Frame(frame.len()), "flip at {at}");
        }
    }
}
