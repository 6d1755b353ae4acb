//! The disk spool: an append-only, segmented log of records Kafka has not yet acknowledged, with group-committed
//! fsyncs, recovery of torn and corrupt segments, and the queue of records waiting to be re-published.

pub mod frame;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

pub use frame::SpooledRecord;

use crate::metrics::Metrics;

/// Where one record lies in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordRef {
    /// Segment number (its file name).
    pub segment: u64,
    /// Byte offset of the frame in the segment.
    pub offset: u64,
}

/// Why the spool could not take or give back a record.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// `--spool-max-bytes` would be exceeded.
    #[error("the disk spool is full")]
    Full,
    /// The record does not fit the frame format.
    #[error(transparent)]
    TooLarge(#[from] frame::TooLarge),
    /// A file operation failed.
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
    /// The spool is closed (shutdown).
    #[error("the spool is closed")]
    Closed,
    /// A record read back does not decode.
    #[error("spool record at segment {0} offset {1} is unreadable")]
    Unreadable(u64, u64),
}

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Directory holding the segments (created if missing).
    pub dir: PathBuf,
    /// Most bytes the segments may take.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
}

/// What the writer does once a frame is durable.
enum AfterWrite {
    /// Tell the caller where it lies.
    Reply(oneshot::Sender<Result<RecordRef, SpoolError>>),
    /// Queue it for re-publishing.
    Replay,
}

enum Command {
    Append { frame: Vec<u8>, then: AfterWrite },
    Ack(RecordRef),
}

struct Shared {
    used_bytes: AtomicU64,
    max_bytes: u64,
    replay: Mutex<VecDeque<RecordRef>>,
    replay_ready: Condvar,
    metrics: Arc<Metrics>,
}

/// A handle on the spool; cheap to share.
pub struct Spool {
    dir: PathBuf,
    shared: Arc<Shared>,
    commands: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("segment-{segment:016}.spool"))
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_prefix("segment-")?.strip_suffix(".spool")?.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating if needed) the spool, recovers existing segments, and queues every record found for replay.
    pub fn open(config: SpoolConfig, metrics: Arc<Metrics>) -> Result<Arc<Spool>, SpoolError> {
        fs::create_dir_all(&config.dir)?;
        let mut segments = BTreeMap::new();
        let mut recovered = VecDeque::new();
        let mut used = 0;
        let mut paths: Vec<(u64, PathBuf)> = fs::read_dir(&config.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter_map(|path| segment_number(&path).map(|n| (n, path)))
            .collect();
        paths.sort();
        for (segment, path) in &paths {
            let offsets = recover_segment(&config.dir, *segment, path, &metrics)?;
            if offsets.is_empty() {
                fs::remove_file(path)?;
                continue;
            }
            let len = fs::metadata(path)?.len();
            used += len;
            segments.insert(*segment, SegmentState { outstanding: offsets.len() as u64, len });
            recovered.extend(offsets.into_iter().map(|offset| RecordRef { segment: *segment, offset }));
        }
        if !recovered.is_empty() {
            info!(records = recovered.len(), segments = segments.len(), "spool recovered; records queued for replay");
        }
        metrics.spool_events.set(recovered.len() as i64);
        metrics.spool_bytes.set(used as i64);
        metrics.spool_max_bytes.set(config.max_bytes as i64);
        let shared = Arc::new(Shared {
            used_bytes: AtomicU64::new(used),
            max_bytes: config.max_bytes,
            replay: Mutex::new(recovered),
            replay_ready: Condvar::new(),
            metrics,
        });
        let active_segment = paths.last().map_or(1, |(n, _)| n + 1);
        let active = open_segment(&config.dir, active_segment)?;
        segments.insert(active_segment, SegmentState { outstanding: 0, len: 0 });
        let (commands, receiver) = mpsc::channel();
        let mut writer = Writer {
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            active,
            active_segment,
            segments,
            shared: shared.clone(),
        };
        let handle = thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(receiver))
            .expect("spawn spool writer");
        Ok(Arc::new(Spool {
            dir: config.dir,
            shared,
            commands: Mutex::new(Some(commands)),
            writer: Mutex::new(Some(handle)),
        }))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `--spool-max-bytes`.
    pub fn max_bytes(&self) -> u64 {
        self.shared.max_bytes
    }

    fn reserve(&self, bytes: u64, limit: u64) -> Result<(), SpoolError> {
        let shared = &self.shared;
        let mut used = shared.used_bytes.load(Ordering::Relaxed);
        loop {
            if used + bytes > limit {
                return Err(SpoolError::Full);
            }
            match shared.used_bytes.compare_exchange_weak(used, used + bytes, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    fn send(&self, command: Command) -> Result<(), SpoolError> {
        let commands = self.commands.lock().expect("spool lock");
        commands.as_ref().ok_or(SpoolError::Closed)?.send(command).map_err(|_| SpoolError::Closed)
    }

    /// Writes a frame and resolves once it is on disk (fsynced), with its place in the spool.
    pub fn append(&self, frame: Vec<u8>) -> Result<oneshot::Receiver<Result<RecordRef, SpoolError>>, SpoolError> {
        self.reserve(frame.len() as u64, self.shared.max_bytes)?;
        let (reply, written) = oneshot::channel();
        let len = frame.len() as u64;
        self.send(Command::Append { frame, then: AfterWrite::Reply(reply) }).inspect_err(|_| self.release(len))?;
        Ok(written)
    }

    /// Writes a frame and queues it for re-publishing once it is on disk.
    pub fn append_for_replay(&self, frame: Vec<u8>) -> Result<(), SpoolError> {
        self.reserve(frame.len() as u64, self.shared.max_bytes)?;
        let len = frame.len() as u64;
        self.send(Command::Append { frame, then: AfterWrite::Replay }).inspect_err(|_| self.release(len))
    }

    fn release(&self, bytes: u64) {
        self.shared.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// True while at least `headroom` bytes are free: new callbacks are refused below that, so that the
    /// records already in flight always find room if Kafka fails them.
    pub fn has_headroom(&self, headroom: u64) -> bool {
        self.shared.used_bytes.load(Ordering::Relaxed) + headroom <= self.shared.max_bytes
    }

    /// Kafka acknowledged the record: it may be deleted.
    pub fn ack(&self, record: RecordRef) {
        if self.send(Command::Ack(record)).is_err() {
            // Closed: the record stays on disk and is replayed on the next start (a duplicate, never a loss).
        }
    }

    /// Queues a record already on disk for re-publishing (at the back).
    pub fn requeue(&self, record: RecordRef) {
        self.shared.replay.lock().expect("replay lock").push_back(record);
        self.shared.replay_ready.notify_one();
    }

    /// Puts a record back at the front of the replay queue (it was taken but not sent).
    pub fn unget(&self, record: RecordRef) {
        self.shared.replay.lock().expect("replay lock").push_front(record);
    }

    /// The next record to re-publish, waiting up to `timeout` for one.
    pub fn next_to_replay(&self, timeout: Duration) -> Option<RecordRef> {
        let queue = self.shared.replay.lock().expect("replay lock");
        let (mut queue, _) =
            self.shared.replay_ready.wait_timeout_while(queue, timeout, |queue| queue.is_empty()).expect("replay lock");
        queue.pop_front()
    }

    /// Records waiting to be re-published.
    pub fn replay_backlog(&self) -> usize {
        self.shared.replay.lock().expect("replay lock").len()
    }

    /// Stops the writer after it has written and synced every command sent so far.
    pub fn close(&self) {
        drop(self.commands.lock().expect("spool lock").take());
        if let Some(writer) = self.writer.lock().expect("spool lock").take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads records back by their [`RecordRef`], keeping a few segment files open.
pub struct SpoolReader {
    dir: PathBuf,
    files: HashMap<u64, File>,
}

impl SpoolReader {
    /// A reader over the spool in `dir`.
    pub fn new(dir: &Path) -> Self {
        SpoolReader { dir: dir.to_owned(), files: HashMap::new() }
    }

    /// Reads and verifies one record.
    pub fn read(&mut self, record: RecordRef) -> Result<SpooledRecord, SpoolError> {
        if !self.files.contains_key(&record.segment) {
            if self.files.len() >= 8 {
                self.files.clear();
            }
            self.files.insert(record.segment, File::open(segment_path(&self.dir, record.segment))?);
        }
        let file = &self.files[&record.segment];
        let mut header = [0u8; frame::HEADER_LEN];
        file.read_exact_at(&mut header, record.offset)?;
        let payload_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        if payload_len > frame::MAX_PAYLOAD {
            return Err(SpoolError::Unreadable(record.segment, record.offset));
        }
        let mut buffer = vec![0u8; frame::HEADER_LEN + payload_len];
        file.read_exact_at(&mut buffer, record.offset)?;
        match frame::scan(&buffer) {
            frame::Scan::Frame(_) => {
                frame::decode(&buffer).ok_or(SpoolError::Unreadable(record.segment, record.offset))
            }
            _ => Err(SpoolError::Unreadable(record.segment, record.offset)),
        }
    }
}

/// An active segment whose records are all delivered is replaced once it is this large (or a quarter of a
/// segment), so that delivered bytes neither count against the limit for long nor replay after a crash.
const ROTATE_WHEN_DELIVERED_BYTES: u64 = 256 * 1024;

struct SegmentState {
    outstanding: u64,
    len: u64,
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    active: File,
    active_segment: u64,
    segments: BTreeMap<u64, SegmentState>,
    shared: Arc<Shared>,
}

fn open_segment(dir: &Path, segment: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(segment_path(dir, segment))?;
    sync_dir(dir)?;
    Ok(file)
}

impl Writer {
    fn run(&mut self, commands: mpsc::Receiver<Command>) {
        // Group commit: everything that queued up while the previous fsync ran shares the next one.
        while let Ok(first) = commands.recv() {
            let mut batch = vec![first];
            batch.extend(commands.try_iter().take(4096));
            self.process(batch);
        }
        if let Err(err) = self.active.sync_data() {
            error!(error = %err, "spool: final fsync failed");
        }
        // A clean stop leaves no delivered records behind to be replayed as duplicates.
        if self.segments.get(&self.active_segment).is_some_and(|state| state.outstanding == 0) {
            let _ = fs::remove_file(segment_path(&self.dir, self.active_segment));
        }
    }

    fn process(&mut self, batch: Vec<Command>) {
        let mut written: Vec<(RecordRef, AfterWrite)> = Vec::new();
        let mut acks = Vec::new();
        let mut failed: Option<io::Error> = None;
        for command in batch {
            match command {
                Command::Append { frame, then } => {
                    if failed.is_some() {
                        self.shared.used_bytes.fetch_sub(frame.len() as u64, Ordering::AcqRel);
                        written.push((RecordRef { segment: 0, offset: u64::MAX }, then));
                        continue;
                    }
                    match self.write(&frame) {
                        Ok(place) => written.push((place, then)),
                        Err(err) => {
                            self.shared.used_bytes.fetch_sub(frame.len() as u64, Ordering::AcqRel);
                            written.push((RecordRef { segment: 0, offset: u64::MAX }, then));
                            failed = Some(err);
                        }
                    }
                }
                Command::Ack(record) => acks.push(record),
            }
        }
        if !written.is_empty() && failed.is_none() {
            let started = Instant::now();
            if let Err(err) = self.active.sync_data() {
                failed = Some(err);
            }
            self.shared.metrics.spool_fsync_duration.observe(started.elapsed().as_secs_f64());
        }
        let metrics = self.shared.metrics.clone();
        for (place, then) in written {
            let ok = failed.is_none() && place.offset != u64::MAX;
            if ok {
                metrics.spool_events.inc();
            }
            match then {
                AfterWrite::Reply(reply) => {
                    let result = match &failed {
                        None => Ok(place),
                        Some(err) => Err(SpoolError::Io(io::Error::new(err.kind(), err.to_string()))),
                    };
                    let _ = reply.send(result);
                }
                AfterWrite::Replay if ok => {
                    self.shared.replay.lock().expect("replay lock").push_back(place);
                    self.shared.replay_ready.notify_one();
                }
                AfterWrite::Replay => {
                    metrics.events_lost.inc();
                    error!("spool write failed; a record Kafka had refused is lost");
                }
            }
        }
        if let Some(err) = failed {
            error!(error = %err, "spool write failed");
        }
        // Acks after the fsync: a record re-spooled in this batch is durable before its older copy goes.
        for record in acks {
            self.ack(record);
        }
        // Delivered records of the active segment would be replayed after a crash: start afresh whenever
        // everything in it is delivered.
        let active = &self.segments[&self.active_segment];
        if active.outstanding == 0 && active.len >= ROTATE_WHEN_DELIVERED_BYTES.min(self.segment_bytes / 4) {
            if let Err(err) = self.rotate() {
                error!(error = %err, "spool: cannot start a new segment");
            }
        }
        metrics.spool_bytes.set(self.shared.used_bytes.load(Ordering::Relaxed) as i64);
    }

    fn write(&mut self, frame: &[u8]) -> io::Result<RecordRef> {
        let state = self.segments.get(&self.active_segment).expect("active segment tracked");
        if state.len > 0 && state.len + frame.len() as u64 > self.segment_bytes {
            self.rotate()?;
        }
        let state = self.segments.get_mut(&self.active_segment).expect("active segment tracked");
        self.active.write_all(frame)?;
        let place = RecordRef { segment: self.active_segment, offset: state.len };
        state.len += frame.len() as u64;
        state.outstanding += 1;
        Ok(place)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.active.sync_data()?;
        let next = self.active_segment + 1;
        self.active = open_segment(&self.dir, next)?;
        let sealed = std::mem::replace(&mut self.active_segment, next);
        self.segments.insert(next, SegmentState { outstanding: 0, len: 0 });
        self.delete_if_done(sealed);
        Ok(())
    }

    fn ack(&mut self, record: RecordRef) {
        let Some(state) = self.segments.get_mut(&record.segment) else {
            warn!(segment = record.segment, "spool: ack for an unknown segment");
            return;
        };
        state.outstanding = state.outstanding.saturating_sub(1);
        self.shared.metrics.spool_events.dec();
        self.delete_if_done(record.segment);
    }

    fn delete_if_done(&mut self, segment: u64) {
        if segment == self.active_segment {
            return;
        }
        if let Some(state) = self.segments.get(&segment) {
            if state.outstanding == 0 {
                match fs::remove_file(segment_path(&self.dir, segment)) {
                    Ok(()) => {
                        self.shared.used_bytes.fetch_sub(state.len, Ordering::AcqRel);
                        self.segments.remove(&segment);
                    }
                    Err(err) => error!(segment, error = %err, "spool: cannot delete a delivered segment"),
                }
            }
        }
    }
}

/// Scans one segment: a torn tail is cut off, corrupt regions are moved to `quarantine/`, and the file is
/// rewritten with only its valid frames. Returns the offsets of those frames.
fn recover_segment(dir: &Path, segment: u64, path: &Path, metrics: &Metrics) -> Result<Vec<u64>, SpoolError> {
    let data = fs::read(path)?;
    let mut offsets = Vec::new();
    let mut kept: Vec<(usize, usize)> = Vec::new();
    let mut position = 0;
    let mut damaged = false;
    while position < data.len() {
        match frame::scan(&data[position..]) {
            frame::Scan::Frame(len) => {
                kept.push((position, len));
                position += len;
            }
            frame::Scan::Torn => {
                quarantine(dir, segment, position, &data[position..], "torn tail (crash mid-write)")?;
                damaged = true;
                break;
            }
            frame::Scan::Corrupt => {
                let resume = (position + 1..data.len())
                    .find(|&at| {
                        data[at..].starts_with(&frame::MAGIC)
                            && matches!(frame::scan(&data[at..]), frame::Scan::Frame(_))
                    })
                    .unwrap_or(data.len());
                quarantine(dir, segment, position, &data[position..resume], "bad checksum")?;
                metrics.spool_quarantined.inc();
                damaged = true;
                position = resume;
            }
        }
    }
    if !damaged {
        return Ok(kept.iter().map(|(at, _)| *at as u64).collect());
    }
    let mut rewritten = Vec::with_capacity(data.len());
    for (at, len) in kept {
        offsets.push(rewritten.len() as u64);
        rewritten.extend_from_slice(&data[at..at + len]);
    }
    let temporary = path.with_extension("rewrite");
    {
        let mut file = File::create(&temporary)?;
        file.write_all(&rewritten)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    sync_dir(dir)?;
    Ok(offsets)
}

fn quarantine(dir: &Path, segment: u64, offset: usize, bytes: &[u8], why: &str) -> Result<(), SpoolError> {
    let quarantine_dir = dir.join("quarantine");
    fs::create_dir_all(&quarantine_dir)?;
    let path = quarantine_dir.join(format!("segment-{segment:016}-at-{offset}.bin"));
    let mut file = File::create(&path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    error!(path = %path.display(), bytes = bytes.len(), reason = why, "spool: damaged bytes moved to quarantine");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig { dir: dir.to_owned(), max_bytes: 1 << 20, segment_bytes: 4096 }
    }

    fn frame_for(i: usize) -> Vec<u8> {
        let id = format!("id-{i}");
        let headers: [(&str, &[u8]); 1] = [("event_id", id.as_bytes())];
        frame::encode("t", format!("k{i}").as_bytes(), &vec![b'x'; 300], headers.into_iter()).unwrap()
    }

    fn drain(spool: &Spool) -> Vec<RecordRef> {
        std::iter::from_fn(|| spool.next_to_replay(Duration::from_millis(50))).collect()
    }

    fn keys(dir: &Path, refs: &[RecordRef]) -> Vec<String> {
        let mut reader = SpoolReader::new(dir);
        refs.iter().map(|r| String::from_utf8(reader.read(*r).unwrap().key).unwrap()).collect()
    }

    #[tokio::test]
    async fn appended_records_survive_a_restart_in_order_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        let mut places = Vec::new();
        for i in 0..40 {
            places.push(spool.append(frame_for(i)).unwrap().await.unwrap().unwrap());
        }
        assert!(places.iter().map(|p| p.segment).max() > places.iter().map(|p| p.segment).min(), "rotated");
        for place in &places[..25] {
            spool.ack(*place);
        }
        spool.close();
        drop(spool);

        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        let recovered = drain(&spool);
        let expected: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        // Whole segments go only when all their records are acked: at least the last 15 come back, in order.
        let got = keys(dir.path(), &recovered);
        assert!(got.len() >= 15 && got.len() < 40, "{}", got.len());
        assert_eq!(got, expected[40 - got.len()..]);
        assert_eq!(metrics.spool_events.get(), got.len() as i64);
        for place in recovered {
            spool.ack(place);
        }
        spool.close();
        let left: Vec<_> =
            fs::read_dir(dir.path()).unwrap().filter_map(|e| segment_number(&e.unwrap().path())).collect();
        assert!(left.is_empty(), "a clean close leaves no delivered segment: {left:?}");
    }

    #[tokio::test]
    async fn a_full_spool_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let spool =
            Spool::open(SpoolConfig { max_bytes: 1000, ..config(dir.path()) }, Arc::new(Metrics::new())).unwrap();
        spool.append(frame_for(0)).unwrap().await.unwrap().unwrap();
        spool.append(frame_for(1)).unwrap().await.unwrap().unwrap();
        assert!(matches!(spool.append(frame_for(2)), Err(SpoolError::Full)));
        assert!(!spool.has_headroom(400));
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_corrupt_record_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        for i in 0..3 {
            spool.append(frame_for(i)).unwrap().await.unwrap().unwrap();
        }
        spool.close();
        drop(spool);
        let path = segment_path(dir.path(), 1);
        let mut data = fs::read(&path).unwrap();
        let frame_len = frame_for(0).len();
        data[frame_len + 40] ^= 0xff; // corrupt the middle record's payload
        data.extend_from_slice(&frame_for(3)[..100]); // a torn fourth record
        fs::write(&path, &data).unwrap();

        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        let recovered = drain(&spool);
        assert_eq!(keys(dir.path(), &recovered), vec!["k0", "k2"]);
        assert_eq!(metrics.spool_quarantined.get(), 1);
        let quarantined: Vec<_> = fs::read_dir(dir.path().join("quarantine")).unwrap().collect();
        assert_eq!(quarantined.len(), 2, "the corrupt record and the torn tail are kept");
        spool.close();
        drop(spool);
        // Recovery rewrote the segment: a second start finds no damage.
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        assert_eq!(drain(&spool).len(), 2);
        assert_eq!(metrics.spool_quarantined.get(), 1);
    }
}
