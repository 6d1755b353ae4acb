//! Read-only scanning of spool segments: which bytes are whole frames and which are damaged. Recovery
//! ([`super::Spool::open`]) acts on the result (quarantine, rewrite); the operator tools only report it.
//!
//! Nothing here writes, renames or locks: a forwarder may be appending to the newest segment while it is
//! scanned, in which case the frame being written shows as a torn tail.
//!
//! Segments are preallocated with zeros (see [`super`]): the zeros after the last frame are room not yet
//! written, not damage. A scan ends where only zeros remain ([`SegmentScan::end`]); a partial frame followed by
//! zeros is a torn tail (a write a crash cut short), and a damaged tail stops where the zeros begin.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::frame::{self, SpooledRecord};

/// A whole, valid frame of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    /// Byte offset of the frame in the segment.
    pub offset: u64,
    /// Length of the frame in bytes.
    pub len: usize,
}

/// What kind of bytes a [`Damage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// Bytes that are not a valid frame, with valid frames after them (bit rot, an overwritten region).
    Corrupt,
    /// The segment ends inside a frame: a write cut short by a crash (never acknowledged), or one under way.
    TornTail,
    /// The segment ends with bytes that are no frame at all.
    CorruptTail,
}

impl DamageKind {
    /// Whether the damage runs to the end of the segment.
    pub fn is_tail(self) -> bool {
        matches!(self, DamageKind::TornTail | DamageKind::CorruptTail)
    }

    /// A short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            DamageKind::Corrupt => "corrupt region",
            DamageKind::TornTail => "torn tail",
            DamageKind::CorruptTail => "corrupt tail",
        }
    }
}

/// A run of bytes of a segment that are not whole, valid frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first damaged byte.
    pub offset: u64,
    /// Number of damaged bytes (up to the next valid frame, or the end).
    pub len: u64,
    /// What they are.
    pub kind: DamageKind,
}

/// The frames and damaged regions of one segment, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Valid frames.
    pub frames: Vec<FrameAt>,
    /// Damaged regions.
    pub damage: Vec<Damage>,
    /// Where the written bytes end: the start of the zeros that fill the rest of a preallocated segment, or
    /// the segment's length.
    pub end: u64,
}

/// Where the next valid frame starts at or after `from`, if any.
fn next_frame(data: &[u8], from: usize) -> Option<usize> {
    let finder = memchr::memmem::Finder::new(&frame::MAGIC);
    let mut at = from;
    while at < data.len() {
        let found = at + finder.find(&data[at..])?;
        if matches!(frame::scan(&data[found..]), frame::Scan::Frame(_)) {
            return Some(found);
        }
        at = found + 1;
    }
    None
}

/// Splits a segment's bytes into valid frames and damaged regions. After a bad frame, whatever length it
/// claims, the scan goes on at the next valid frame. Zeros to the end of the segment are unwritten room.
pub fn scan_segment(data: &[u8]) -> SegmentScan {
    // Everything from `written` on is zeros: the preallocated room no write has reached (a frame starts with
    // MAGIC and never ends in a zero byte's place: its checksum covers its length).
    let written = data.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    let mut scanned = SegmentScan { end: written as u64, ..SegmentScan::default() };
    let mut position = 0;
    while position < written {
        let found = frame::scan(&data[position..]);
        if let frame::Scan::Frame(len) = found {
            scanned.frames.push(FrameAt { offset: position as u64, len });
            position += len;
            continue;
        }
        let (end, kind) = match next_frame(data, position + 1) {
            Some(resume) => (resume, DamageKind::Corrupt),
            // The frame runs past the end of the file: a growing segment's last write, cut short.
            None if found == frame::Scan::Torn => (data.len(), DamageKind::TornTail),
            // A frame's start followed by zeros: a write that stopped inside the preallocated room.
            None if written < data.len() && starts_like_a_frame(&data[position..written]) => {
                (written, DamageKind::TornTail)
            }
            None => (written, DamageKind::CorruptTail),
        };
        scanned.damage.push(Damage { offset: position as u64, len: (end - position) as u64, kind });
        position = end;
    }
    // A frame (or a torn one) whose last bytes are zeros ends past `written`.
    scanned.end = scanned.end.max(position as u64);
    scanned
}

/// Whether `bytes` begin as a frame does (its magic, or the part of it there is).
fn starts_like_a_frame(bytes: &[u8]) -> bool {
    let n = bytes.len().min(frame::MAGIC.len());
    n > 0 && bytes[..n] == frame::MAGIC[..n]
}

/// Reads a whole segment through a read-only handle. `Ok(None)` when it is gone (a forwarder deleted it
/// after Kafka acknowledged all its records).
pub fn read_segment(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    Ok(Some(data))
}

/// Decodes the records of a scanned segment, with their offsets.
pub fn records<'a>(data: &'a [u8], scanned: &'a SegmentScan) -> impl Iterator<Item = (u64, SpooledRecord)> + 'a {
    scanned.frames.iter().filter_map(move |at| {
        let bytes = &data[at.offset as usize..at.offset as usize + at.len];
        frame::decode(bytes).map(|record| (at.offset, record))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_for(i: usize) -> Vec<u8> {
        let id = format!("id-{i}");
        let headers: [(&str, &[u8]); 1] = [("event_id", id.as_bytes())];
        frame::encode("t", format!("k{i}").as_bytes(), &[b'x'; 50], headers.into_iter()).unwrap()
    }

    fn segment(n: usize) -> Vec<u8> {
        (0..n).flat_map(frame_for).collect()
    }

    #[test]
    fn a_clean_segment_is_all_frames() {
        let data = segment(3);
        let len = frame_for(0).len();
        let scanned = scan_segment(&data);
        assert!(scanned.damage.is_empty());
        let offsets: Vec<u64> = scanned.frames.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, vec![0, len as u64, 2 * len as u64]);
        let keys: Vec<Vec<u8>> = records(&data, &scanned).map(|(_, r)| r.key).collect();
        assert_eq!(keys, vec![b"k0".to_vec(), b"k1".to_vec(), b"k2".to_vec()]);
        assert_eq!(scan_segment(&[]), SegmentScan::default());
    }

    #[test]
    fn a_flipped_byte_is_a_corrupt_region_and_the_frames_after_it_are_kept() {
        let len = frame_for(0).len();
        let mut data = segment(3);
        data[len + 20] ^= 0x40;
        let scanned = scan_segment(&data);
        assert_eq!(scanned.damage, vec![Damage { offset: len as u64, len: len as u64, kind: DamageKind::Corrupt }]);
        assert_eq!(scanned.frames.len(), 2);
        assert_eq!(scanned.frames[1].offset, 2 * len as u64);
    }

    #[test]
    fn a_cut_last_frame_is_a_torn_tail_and_garbage_a_corrupt_tail() {
        let len = frame_for(0).len();
        let mut data = segment(2);
        data.extend_from_slice(&frame_for(2)[..30]);
        let scanned = scan_segment(&data);
        assert_eq!(scanned.frames.len(), 2);
        assert_eq!(scanned.damage, vec![Damage { offset: 2 * len as u64, len: 30, kind: DamageKind::TornTail }]);

        let mut data = segment(1);
        data.extend_from_slice(b"garbage!");
        let scanned = scan_segment(&data);
        assert_eq!(scanned.damage, vec![Damage { offset: len as u64, len: 8, kind: DamageKind::CorruptTail }]);
        assert!(scanned.damage[0].kind.is_tail());
    }

    #[test]
    fn the_zeros_of_a_preallocated_segment_are_room_not_damage() {
        let len = frame_for(0).len();
        let mut data = segment(2);
        data.resize(64 * 1024, 0);
        let scanned = scan_segment(&data);
        assert_eq!(scanned.frames.len(), 2);
        assert!(scanned.damage.is_empty(), "{:?}", scanned.damage);
        assert_eq!(scanned.end, 2 * len as u64);

        let zeros = scan_segment(&vec![0; 4096]);
        assert_eq!((zeros.frames.len(), zeros.damage.len(), zeros.end), (0, 0, 0));
    }

    #[test]
    fn a_frame_ending_in_zero_bytes_before_the_room_is_whole() {
        // No headers: the payload ends with a zero header count.
        let frame = frame::encode("t", b"k", b"v", std::iter::empty()).unwrap();
        assert_eq!(&frame[frame.len() - 2..], &[0, 0]);
        let mut data = frame.clone();
        data.resize(8192, 0);
        let scanned = scan_segment(&data);
        assert_eq!(scanned.frames, vec![FrameAt { offset: 0, len: frame.len() }]);
        assert!(scanned.damage.is_empty());
        assert_eq!(scanned.end, frame.len() as u64);
    }

    #[test]
    fn a_write_cut_short_inside_the_room_is_a_torn_tail_that_stops_at_the_zeros() {
        let len = frame_for(0).len();
        let mut data = segment(2);
        data.extend_from_slice(&frame_for(2)[..len - 7]);
        data.resize(64 * 1024, 0);
        let scanned = scan_segment(&data);
        assert_eq!(scanned.frames.len(), 2);
        assert_eq!(
            scanned.damage,
            vec![Damage { offset: 2 * len as u64, len: (len - 7) as u64, kind: DamageKind::TornTail }]
        );
        assert_eq!(scanned.end, (3 * len - 7) as u64);

        // Bytes that are no frame at all, then zeros: a corrupt tail, just as long as the bytes.
        let mut data = segment(1);
        data.extend_from_slice(b"garbage!");
        data.resize(4096, 0);
        let scanned = scan_segment(&data);
        assert_eq!(scanned.damage, vec![Damage { offset: len as u64, len: 8, kind: DamageKind::CorruptTail }]);

        // Zeros where a batch's first pages were never written, with its later frames on disk (a crash before
        // the fdatasync): the frames are kept, the zeros are a corrupt region between them.
        let mut data = segment(1);
        data.extend_from_slice(&vec![0; len]);
        data.extend_from_slice(&frame_for(2));
        data.resize(8192, 0);
        let scanned = scan_segment(&data);
        assert_eq!(scanned.frames.len(), 2);
        assert_eq!(scanned.damage, vec![Damage { offset: len as u64, len: len as u64, kind: DamageKind::Corrupt }]);
    }

    #[test]
    fn reading_a_missing_segment_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_segment(&dir.path().join("segment-0000000000000001.spool")).unwrap().is_none());
    }
}
