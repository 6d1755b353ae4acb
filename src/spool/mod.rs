//! The disk spool: an append-only, segmented log of records Kafka has not yet acknowledged, with group-committed
//! fsyncs, recovery of torn and corrupt segments, and the queue of records waiting to be re-published.
//!
//! Every failure of a file operation has a named outcome (PostgreSQL's WAL is the model: nothing is assumed
//! about a short write or a failed sync):
//! - a write that fails or stops short is cut back to the last whole frame before anything else is written
//!   (if the cut fails too, the segment is sealed and a new one started; if that fails, the next frame goes after
//!   the damage, which recovery skips), and only that record is refused;
//! - a failed fdatasync refuses every record of its batch, seals the segment (a later sync of the same file
//!   proves nothing) and queues the batch for replay anyway: what is readable is still delivered;
//! - a frame that cannot be read back is retried later; one proven undecodable moves to `quarantine/`;
//! - a segment is deleted only when every record in it is delivered, and the directory is synced after.
//!
//! Speed (issue 13): the writer thread takes every append that queued up while the previous fdatasync ran (group
//! commit), writes consecutive frames of a segment with one `write` (at most [`MAX_RUN_BYTES`]; a failed run is
//! cut back and retried frame by frame, so that one bad frame refuses only itself), and syncs once. Kafka's
//! acknowledgements do not wake it: they are collected in a list it settles after each commit, or every
//! [`ACK_SETTLE_INTERVAL`] when idle. Delivered segments are deleted by a second thread, the janitor: unlinking
//! a full segment took milliseconds (7 ms at p50 under load), and every commit queued behind it waited.
//!
//! Segments are preallocated (PostgreSQL's WAL does the same): the janitor keeps a spare file of
//! `segment_bytes` zeros, written and synced ahead of need (`spare-N.zeros`), and a new segment is that file
//! renamed, written in place with `pwrite`. An fdatasync then writes only data: in a growing file every sync
//! also writes the inode for the new file size (or commits it to the journal), and on this project's VM that
//! doubled the sync's latency under load (p50 0.58 against 0.27 ms, p99 7.8 against 3.0 ms:
//! `examples/fsync_probe.rs` beside a saturated forwarder). The
//! zeros after the last frame are room, not damage, to recovery and the tools ([`scan`]). Without room for a
//! spare (less than two segments and [`SPARE_FREE_MARGIN`] free on the disk) or when preparing one fails, the
//! next segment is an empty file that grows, as before: slower, never less safe. The spool's limit counts the
//! frames written, not the zeros: the disk holds up to two segments more (the active segment's room and the
//! spare).
//!
//! One forwarder per directory: [`Spool::open`] takes [`lock::DirLock`] (`DIR/LOCK`) for as long as the spool is
//! open. [`scan`] is the read-only view of the segments that recovery and the operator tools share.

pub mod frame;
pub mod lock;
pub mod scan;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

pub use frame::SpooledRecord;

use crate::metrics::Metrics;
use crate::seam::{self, Fault};

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
    /// A record read back does not decode: its bytes are damaged.
    #[error("spool record at segment {0} offset {1} is unreadable")]
    Unreadable(u64, u64),
    /// Another process holds the directory's lock: two forwarders must never share a spool.
    #[error("{} is in use by another forwarder ({}); two forwarders must not share a spool directory", .dir.display(), match .pid { Some(pid) => format!("PID {pid}, per {}", .lock_file.display()), None => format!("PID unknown, lock {}", .lock_file.display()) })]
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// Its lock file.
        lock_file: PathBuf,
        /// The holder's PID, as written in the lock file.
        pid: Option<u32>,
    },
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

/// One frame for the writer.
struct Append {
    frame: Vec<u8>,
    then: AfterWrite,
}

/// Consecutive frames are written with one `write` of at most this many bytes (a bound on the writer's buffer).
pub const MAX_RUN_BYTES: usize = 256 * 1024;
/// How often an idle writer settles Kafka's acknowledgements (deletes delivered segments).
pub const ACK_SETTLE_INTERVAL: Duration = Duration::from_millis(50);
/// The preallocated segment-to-be in the spool directory is `spare-N.zeros` (N counts the spares of this
/// process): zeros, synced, renamed into place by the next rotation. Deleted at open and at close (it holds
/// nothing). Each spare has a name of its own, so that the janitor never writes into a file the writer has
/// already taken.
pub const SPARE_PREFIX: &str = "spare-";
/// See [`SPARE_PREFIX`].
pub const SPARE_SUFFIX: &str = ".zeros";
/// A spare is prepared only while the disk keeps this much free besides it and the active segment's room, so
/// that preallocation never brings readiness's disk check (or an append) closer to a full disk.
pub const SPARE_FREE_MARGIN: u64 = 64 * 1024 * 1024;

struct Shared {
    used_bytes: AtomicU64,
    max_bytes: u64,
    replay: Mutex<VecDeque<RecordRef>>,
    replay_ready: Condvar,
    // Delivered records not yet settled by the writer: a push costs no wake-up of the writer thread.
    acks: Mutex<Vec<RecordRef>>,
    // The spare the janitor has made and synced, until the writer takes it. The janitor has closed the file
    // before putting it here and never opens that name again.
    spare: Mutex<Option<PathBuf>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn queue_for_replay(&self, record: RecordRef) {
        self.replay.lock().expect("replay lock").push_back(record);
        self.replay_ready.notify_one();
    }

    fn release(&self, bytes: u64) {
        self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// A handle on the spool; cheap to share.
pub struct Spool {
    dir: PathBuf,
    shared: Arc<Shared>,
    commands: Mutex<Option<mpsc::Sender<Append>>>,
    writer: Mutex<Option<JoinHandle<u64>>>,
    // Records still in the spool when the writer stopped (set by `close`).
    left_at_close: Mutex<Option<u64>>,
    // Held while the spool is open: no second forwarder can serve from the same directory.
    _lock: lock::DirLock,
}

/// The path of segment `segment` in the spool directory `dir`.
pub fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("segment-{segment:016}.spool"))
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_prefix("segment-")?.strip_suffix(".spool")?.parse().ok()
}

/// The segments in `dir` (number and path), oldest first. Reads the directory only.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut paths: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter_map(|path| segment_number(&path).map(|n| (n, path)))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Bytes an unprivileged writer may still use on the filesystem holding `dir` (statvfs `f_bavail`).
pub fn free_disk_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statvfs(3) writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

fn is_spare(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(SPARE_PREFIX) && name.ends_with(SPARE_SUFFIX))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An append waiting for its fsync. If the request that made it goes away first (the client hung up), the
/// record is queued for replay instead of waiting in the spool for the next start.
pub struct Written {
    reply: oneshot::Receiver<Result<RecordRef, SpoolError>>,
    shared: Arc<Shared>,
    done: bool,
}

impl Future for Written {
    type Output = Result<RecordRef, SpoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.reply).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                self.done = true;
                Poll::Ready(result.unwrap_or(Err(SpoolError::Closed)))
            }
        }
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // After close() the writer can no longer deliver into this receiver: either the result is here now, or
        // the writer sees the closed channel and queues the record itself.
        self.reply.close();
        if let Ok(Ok(place)) = self.reply.try_recv() {
            self.shared.queue_for_replay(place);
        }
    }
}

impl Spool {
    /// Opens (creating if needed) the spool, recovers existing segments, and queues every record found for replay.
    pub fn open(config: SpoolConfig, metrics: Arc<Metrics>) -> Result<Arc<Spool>, SpoolError> {
        fs::create_dir_all(&config.dir)?;
        let mut segments = BTreeMap::new();
        let mut recovered = VecDeque::new();
        let mut used = 0;
        let lock = lock::DirLock::acquire(&config.dir)?;
        // A spare left by a crash may be only partly written or synced: it is made again.
        let mut removed_any = false;
        for entry in fs::read_dir(&config.dir)? {
            let path = entry?.path();
            if is_spare(&path) {
                fs::remove_file(&path)?;
                removed_any = true;
            }
        }
        let paths = list_segments(&config.dir)?;
        for (segment, path) in &paths {
            let (offsets, len) = recover_segment(&config.dir, *segment, path, &metrics)?;
            if offsets.is_empty() {
                fs::remove_file(path)?;
                removed_any = true;
                continue;
            }
            // What the frames take, not the file's preallocated length: the same figure is given back when
            // the segment is deleted.
            used += len;
            segments.insert(*segment, SegmentState { outstanding: offsets.len() as u64, len });
            recovered.extend(offsets.into_iter().map(|offset| RecordRef { segment: *segment, offset }));
        }
        if removed_any {
            sync_dir(&config.dir)?;
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
            acks: Mutex::new(Vec::new()),
            spare: Mutex::new(None),
            metrics,
        });
        let active_segment = paths.last().map_or(1, |(n, _)| n + 1);
        let active = open_segment(&config.dir, active_segment, &shared)?;
        let janitor = Janitor::start(config.dir.clone(), config.segment_bytes, shared.clone());
        janitor.prepare_spare();
        segments.insert(active_segment, SegmentState { outstanding: 0, len: 0 });
        let (commands, receiver) = mpsc::channel();
        let mut writer = Writer {
            dir: config.dir.clone(),
            segment_bytes: config.segment_bytes,
            active: Some(active.file),
            active_preallocated: active.preallocated,
            attempted_end: 0,
            active_segment,
            segments,
            shared: shared.clone(),
            janitor,
            run: Vec::new(),
            last_early_rotation: None,
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
            left_at_close: Mutex::new(None),
            _lock: lock,
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

    /// Bytes in use or reserved.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used_bytes.load(Ordering::Relaxed)
    }

    /// Takes `bytes` of the spool's room, or fails with [`SpoolError::Full`].
    pub fn reserve(&self, bytes: u64) -> Result<(), SpoolError> {
        let shared = &self.shared;
        let mut used = shared.used_bytes.load(Ordering::Relaxed);
        loop {
            if used + bytes > shared.max_bytes {
                return Err(SpoolError::Full);
            }
            match shared.used_bytes.compare_exchange_weak(used, used + bytes, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Gives back room taken by [`Spool::reserve`] that was not used.
    pub fn release(&self, bytes: u64) {
        self.shared.release(bytes);
    }

    fn send(&self, command: Append) -> Result<(), SpoolError> {
        let commands = self.commands.lock().expect("spool lock");
        commands.as_ref().ok_or(SpoolError::Closed)?.send(command).map_err(|_| SpoolError::Closed)
    }

    /// Writes a frame and resolves once it is on disk (fsynced), with its place in the spool.
    pub fn append(&self, frame: Vec<u8>) -> Result<Written, SpoolError> {
        let len = frame.len() as u64;
        self.reserve(len)?;
        let (reply, written) = oneshot::channel();
        self.send(Append { frame, then: AfterWrite::Reply(reply) }).inspect_err(|_| self.release(len))?;
        Ok(Written { reply: written, shared: self.shared.clone(), done: false })
    }

    /// Writes a frame and queues it for re-publishing once it is on disk.
    pub fn append_for_replay(&self, frame: Vec<u8>) -> Result<(), SpoolError> {
        let len = frame.len() as u64;
        self.reserve(len)?;
        self.append_reserved(frame).inspect_err(|_| self.release(len))
    }

    /// Like [`Spool::append_for_replay`], for a frame whose room was reserved before (its length exactly).
    pub fn append_reserved(&self, frame: Vec<u8>) -> Result<(), SpoolError> {
        self.send(Append { frame, then: AfterWrite::Replay })
    }

    /// Bytes an unprivileged writer may still use on the spool's filesystem (statvfs `f_bavail`): the disk can
    /// fill up before `--spool-max-bytes` does (a smaller volume, other files on it).
    pub fn free_disk_bytes(&self) -> io::Result<u64> {
        free_disk_bytes(&self.dir)
    }

    /// True while at least `headroom` bytes are free.
    pub fn has_headroom(&self, headroom: u64) -> bool {
        self.shared.used_bytes.load(Ordering::Relaxed) + headroom <= self.shared.max_bytes
    }

    /// Kafka acknowledged the record: it may be deleted (by the writer, after its next commit or within
    /// [`ACK_SETTLE_INTERVAL`]). After [`Spool::close`] the record stays on disk and is replayed on the next start
    /// (a duplicate, never a loss).
    pub fn ack(&self, record: RecordRef) {
        self.shared.acks.lock().expect("ack lock").push(record);
    }

    /// Queues a record already on disk for re-publishing (at the back).
    pub fn requeue(&self, record: RecordRef) {
        self.shared.queue_for_replay(record);
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

    /// Moves the bytes of a record that cannot be decoded to `quarantine/` and drops it from the spool.
    pub fn quarantine_unreadable(&self, record: RecordRef) {
        let path = segment_path(&self.dir, record.segment);
        let bytes = read_frame_bytes(&path, record.offset).unwrap_or_default();
        match quarantine(&self.dir, record.segment, record.offset as usize, &bytes, "unreadable at replay") {
            Ok(()) => {
                self.shared.metrics.spool_quarantined.inc();
                self.ack(record);
            }
            // Kept: retried at the next start rather than deleted without a copy.
            Err(err) => error!(error = %err, segment = record.segment, "spool: cannot quarantine an unreadable record"),
        }
    }

    /// Stops the writer after it has written and synced every command sent so far; returns how many records
    /// are left in the spool (not acknowledged by Kafka), all of which the next start replays.
    pub fn close(&self) -> u64 {
        drop(self.commands.lock().expect("spool lock").take());
        let mut left = self.left_at_close.lock().expect("spool lock");
        if let Some(writer) = self.writer.lock().expect("spool lock").take() {
            *left = Some(writer.join().unwrap_or(0));
        }
        left.unwrap_or(0)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

fn read_frame_bytes(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut header = [0u8; frame::HEADER_LEN];
    let available = len.saturating_sub(offset) as usize;
    let header_len = available.min(frame::HEADER_LEN);
    file.read_exact_at(&mut header[..header_len], offset)?;
    let declared = if header_len == frame::HEADER_LEN {
        u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize + frame::HEADER_LEN
    } else {
        header_len
    };
    let mut bytes = vec![0u8; declared.min(available).min(frame::HEADER_LEN + frame::MAX_PAYLOAD)];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
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

    /// Reads and verifies one record: [`SpoolError::Io`] for a failed read (worth retrying),
    /// [`SpoolError::Unreadable`] for bytes that are there but are not a valid frame, or end too soon.
    pub fn read(&mut self, record: RecordRef) -> Result<SpooledRecord, SpoolError> {
        seam::fail_io("spool.read")?;
        let unreadable = SpoolError::Unreadable(record.segment, record.offset);
        if !self.files.contains_key(&record.segment) {
            if self.files.len() >= 8 {
                self.files.clear();
            }
            self.files.insert(record.segment, File::open(segment_path(&self.dir, record.segment))?);
        }
        let file = &self.files[&record.segment];
        let mut header = [0u8; frame::HEADER_LEN];
        match file.read_exact_at(&mut header, record.offset) {
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(unreadable),
            other => other?,
        }
        let payload_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        if payload_len > frame::MAX_PAYLOAD {
            return Err(unreadable);
        }
        let mut buffer = vec![0u8; frame::HEADER_LEN + payload_len];
        match file.read_exact_at(&mut buffer, record.offset) {
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Err(unreadable),
            other => other?,
        }
        match frame::scan(&buffer) {
            frame::Scan::Frame(_) => frame::decode(&buffer).ok_or(unreadable),
            _ => Err(unreadable),
        }
    }
}

/// An active segment whose records are all delivered is replaced once it is this large (or a quarter of a
/// segment), so that delivered bytes neither count against the limit for long nor replay after a crash.
const ROTATE_WHEN_DELIVERED_BYTES: u64 = 256 * 1024;
/// At most one such early replacement per interval: each one creates and deletes a file and syncs the directory
/// twice, between two group commits. Under a steady load the active segment is delivered over and over, and
/// rotating every time it passes [`ROTATE_WHEN_DELIVERED_BYTES`] stalled commits dozens of times a second; what a
/// crash can replay twice is bounded by about this much traffic instead.
const EARLY_ROTATION_INTERVAL: Duration = Duration::from_secs(1);

struct SegmentState {
    outstanding: u64,
    len: u64,
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    // None after every attempt to open a segment failed: appends fail until one succeeds.
    active: Option<File>,
    // The active segment was a spare: its length on disk is `segment_bytes` whatever was written.
    active_preallocated: bool,
    // Where the last failed write into the active segment may have reached (for `seal`).
    attempted_end: u64,
    active_segment: u64,
    segments: BTreeMap<u64, SegmentState>,
    shared: Arc<Shared>,
    // Deletes delivered segments, off this thread.
    janitor: Janitor,
    // The bytes of a run of frames written with one `write`; kept for its capacity (at most MAX_RUN_BYTES + a frame).
    run: Vec<u8>,
    // When the active segment was last replaced because everything in it was delivered.
    last_early_rotation: Option<Instant>,
}

/// A newly opened segment.
struct OpenedSegment {
    file: File,
    preallocated: bool,
}

/// Creates segment `segment`: the janitor's spare renamed into place when one is ready, else an empty file.
/// Either way the directory is synced before the segment takes a frame. Never truncates: after a failure
/// between the rename and the sync, the next attempt opens the same zeros.
fn open_segment(dir: &Path, segment: u64, shared: &Shared) -> io::Result<OpenedSegment> {
    seam::fail_io("spool.rotate")?;
    let path = segment_path(dir, segment);
    let mut preallocated = false;
    let spare = shared.spare.lock().expect("spare lock").take();
    if let Some(spare) = spare {
        match fs::rename(&spare, &path) {
            Ok(()) => preallocated = true,
            Err(err) => {
                warn!(error = %err, "spool: cannot take the preallocated spare; the segment grows instead");
                let _ = fs::remove_file(&spare);
            }
        }
    }
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    // A spare renamed by an attempt that failed afterwards is still zeros of the right length.
    let preallocated = preallocated || file.metadata().is_ok_and(|m| m.len() > 0);
    sync_dir(dir)?;
    Ok(OpenedSegment { file, preallocated })
}

/// One append of a batch, once written (or not).
struct Appended {
    result: Result<RecordRef, io::Error>,
    len: u64,
    then: AfterWrite,
}

impl Writer {
    fn run(&mut self, commands: mpsc::Receiver<Append>) -> u64 {
        // Group commit: everything that queued up while the previous fsync ran shares the next one.
        loop {
            match commands.recv_timeout(ACK_SETTLE_INTERVAL) {
                Ok(first) => {
                    let mut batch = vec![first];
                    batch.extend(commands.try_iter().take(4096));
                    self.process(batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.settle_acks(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        // Acknowledgements that came in before the close: their segments need not be replayed.
        self.settle_acks();
        if let Some(active) = &self.active {
            if let Err(err) = active.sync_data() {
                error!(error = %err, "spool: final fsync failed");
            }
        }
        // A clean stop leaves no delivered records behind to be replayed as duplicates.
        self.active = None;
        self.delete_if_done(self.active_segment);
        // Every deletion handed over is done, and the directory synced, before close() returns.
        self.janitor.finish();
        self.segments.values().map(|state| state.outstanding).sum()
    }

    fn process(&mut self, batch: Vec<Append>) {
        let frames: Vec<&[u8]> = batch.iter().map(|append| append.frame.as_slice()).collect();
        let results = self.write_all_frames(&frames);
        drop(frames);
        let appended: Vec<Appended> = batch
            .into_iter()
            .zip(results)
            .map(|(Append { frame, then }, result)| Appended { result, len: frame.len() as u64, then })
            .collect();
        let mut sync_failed: Option<io::Error> = None;
        if appended.iter().any(|a| a.result.is_ok()) {
            let started = Instant::now();
            let synced = match seam::check("spool.fsync") {
                Some(Fault::Error(err)) => Err(err),
                _ => self.active.as_ref().map_or(Ok(()), |file| file.sync_data()),
            };
            self.shared.metrics.spool_fsync_duration.observe(started.elapsed().as_secs_f64());
            if let Err(err) = synced {
                error!(error = %err, "spool: fsync failed; the batch is refused and the segment sealed");
                // After a failed fdatasync the kernel may have dropped the dirty pages and a later sync of the
                // same file can succeed without them: nothing more is written to this file.
                self.seal();
                sync_failed = Some(err);
            }
        }
        let metrics = self.shared.metrics.clone();
        for Appended { result, len, then } in appended {
            let place = match result {
                Ok(place) => place,
                Err(err) => {
                    self.shared.release(len);
                    match then {
                        AfterWrite::Reply(reply) => {
                            let _ = reply.send(Err(SpoolError::Io(err)));
                        }
                        AfterWrite::Replay => {
                            metrics.events_lost.inc();
                            error!(error = %err, "spool write failed; a record Kafka had refused is lost");
                        }
                    }
                    continue;
                }
            };
            metrics.spool_events.inc();
            match (then, &sync_failed) {
                (AfterWrite::Reply(reply), None) => {
                    if let Err(Ok(place)) = reply.send(Ok(place)) {
                        // The request went away while waiting: replay the record now, not at the next start.
                        self.shared.queue_for_replay(place);
                    }
                }
                (AfterWrite::Reply(reply), Some(err)) => {
                    // Refused, but the bytes are in the file: deliver them anyway rather than pin the segment.
                    let _ = reply.send(Err(SpoolError::Io(io::Error::new(err.kind(), err.to_string()))));
                    self.shared.queue_for_replay(place);
                }
                (AfterWrite::Replay, _) => self.shared.queue_for_replay(place),
            }
        }
        // After the fsync: whatever a record acknowledged now was copied to, in this batch, is durable first.
        self.settle_acks();
    }

    /// Applies the acknowledgements collected since the last call: deletes segments whose records are all
    /// delivered, starts a new active segment once everything in it is delivered, syncs the directory after
    /// deletions.
    fn settle_acks(&mut self) {
        let acks = std::mem::take(&mut *self.shared.acks.lock().expect("ack lock"));
        for &record in &acks {
            self.ack(record);
        }
        // Delivered records of the active segment would be replayed after a crash: start afresh whenever
        // everything in it is delivered.
        let due = self.last_early_rotation.is_none_or(|last| last.elapsed() >= EARLY_ROTATION_INTERVAL);
        if let Some(active) = self.segments.get(&self.active_segment) {
            if due && active.outstanding == 0 && active.len >= ROTATE_WHEN_DELIVERED_BYTES.min(self.segment_bytes / 4) {
                self.last_early_rotation = Some(Instant::now());
                if let Err(err) = self.rotate() {
                    error!(error = %err, "spool: cannot start a new segment");
                }
            }
        }
        self.shared.metrics.spool_bytes.set(self.shared.used_bytes.load(Ordering::Relaxed) as i64);
    }

    /// Writes each frame, in order, and says where each one lies or why it was not written. Consecutive frames
    /// that fit the active segment go out in one `write`; if that fails, it is cut back and its frames are
    /// written one by one, so that only a frame that cannot be written is refused.
    fn write_all_frames(&mut self, frames: &[&[u8]]) -> Vec<io::Result<RecordRef>> {
        let mut results = Vec::with_capacity(frames.len());
        let mut next = 0;
        while next < frames.len() {
            let run = self.run_len(&frames[next..]);
            if run < 2 {
                results.push(self.write(frames[next]));
                next += 1;
                continue;
            }
            let batch = &frames[next..next + run];
            match self.write_run(batch) {
                Ok(first) => {
                    let mut offset = first;
                    for frame in batch {
                        results.push(Ok(RecordRef { segment: self.active_segment, offset }));
                        offset += frame.len() as u64;
                    }
                }
                Err(err) => {
                    warn!(error = %err, frames = run, "spool: a write of several frames failed; writing them one by one");
                    results.extend(batch.iter().map(|frame| self.write(frame)));
                }
            }
            next += run;
        }
        results
    }

    /// How many of `frames`, from the first, fit the active segment as it is (0 when it is closed).
    fn run_len(&self, frames: &[&[u8]]) -> usize {
        let Some(state) = self.active.as_ref().and_then(|_| self.segments.get(&self.active_segment)) else {
            return 0;
        };
        let (mut len, mut bytes, mut count) = (state.len, 0, 0);
        for frame in frames {
            let frame_len = frame.len() as u64;
            if (len > 0 && len + frame_len > self.segment_bytes) || (count > 0 && bytes + frame.len() > MAX_RUN_BYTES) {
                break;
            }
            len += frame_len;
            bytes += frame.len();
            count += 1;
        }
        count
    }

    /// Writes `frames` (which fit the active segment) with one `write`; returns the offset of the first. On
    /// failure the segment is cut back ([`Writer::undo_partial_write`]). A lone frame is written from its own
    /// buffer; several are copied into one run first.
    fn write_run(&mut self, frames: &[&[u8]]) -> io::Result<u64> {
        let bytes: &[u8] = match frames {
            [frame] => frame,
            _ => {
                self.run.clear();
                for frame in frames {
                    self.run.extend_from_slice(frame);
                }
                &self.run
            }
        };
        let total = bytes.len() as u64;
        let good_len = self.segments[&self.active_segment].len;
        let file = self.active.as_ref().expect("a run needs an open segment");
        let written = match seam::check("spool.write") {
            Some(Fault::Error(err)) => Err(err),
            Some(Fault::Short) => {
                // Stops inside the first frame: half of the run could end on a frame boundary and leave no tear.
                let _ = file.write_all_at(&bytes[..frames[0].len() / 2], good_len);
                Err(io::Error::new(io::ErrorKind::WriteZero, "injected short write at spool.write"))
            }
            _ => file.write_all_at(bytes, good_len),
        };
        if let Err(err) = written {
            self.attempted_end = good_len + total;
            self.undo_partial_write(good_len);
            return Err(err);
        }
        let state = self.segments.get_mut(&self.active_segment).expect("active segment tracked");
        state.len += total;
        state.outstanding += frames.len() as u64;
        Ok(good_len)
    }

    /// Writes one frame, starting a new segment first if there is none or it would not fit.
    fn write(&mut self, frame: &[u8]) -> io::Result<RecordRef> {
        if self.active.is_none() {
            self.rotate()?;
        }
        let state = self.segments.get(&self.active_segment).expect("active segment tracked");
        if state.len > 0 && state.len + frame.len() as u64 > self.segment_bytes {
            self.rotate()?;
        }
        let offset = self.write_run(&[frame])?;
        Ok(RecordRef { segment: self.active_segment, offset })
    }

    /// After a failed or short write: a partial frame must not stay before later frames. Cut the file back (a
    /// preallocated segment loses its room and grows from there); failing that, seal it and start a new
    /// segment; failing that too, the next frame still goes where its reference says, past the damage
    /// (recovery skips it).
    fn undo_partial_write(&mut self, good_len: u64) {
        let cut = seam::fail_io("spool.truncate")
            .and_then(|()| self.active.as_ref().map_or(Ok(()), |file| file.set_len(good_len)));
        let Err(err) = cut else { return };
        error!(error = %err, segment = self.active_segment, "spool: cannot cut a failed write back; sealing the segment");
        self.seal();
        if let Err(err) = self.rotate() {
            error!(error = %err, "spool: cannot start a new segment after a failed write");
        }
    }

    /// Stops writing to the active segment; the next write starts a new one.
    fn seal(&mut self) {
        if let Some(file) = self.active.take() {
            if let Some(state) = self.segments.get_mut(&self.active_segment) {
                // What is really in the file, partial frames included, so that no later write lands on them;
                // the extra bytes count as used until the segment is deleted (which gives back its whole
                // length). A preallocated file is as long as a segment: there, what the failed write reached.
                let real = if self.active_preallocated {
                    self.attempted_end.max(state.len)
                } else {
                    file.metadata().map_or(state.len, |m| m.len().max(state.len))
                };
                self.shared.used_bytes.fetch_add(real - state.len, Ordering::AcqRel);
                state.len = real;
            }
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        if let Some(active) = &self.active {
            match seam::check("spool.fsync") {
                Some(Fault::Error(err)) => return Err(err),
                _ => active.sync_data()?,
            }
        }
        let next = self.active_segment + 1;
        // Opened before anything changes: a failure leaves the writer as it was.
        let opened = open_segment(&self.dir, next, &self.shared)?;
        self.janitor.prepare_spare();
        self.active = Some(opened.file);
        self.active_preallocated = opened.preallocated;
        self.attempted_end = 0;
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
        if segment == self.active_segment && self.active.is_some() {
            return;
        }
        if self.segments.get(&segment).is_some_and(|state| state.outstanding == 0) {
            let state = self.segments.remove(&segment).expect("segment tracked");
            self.janitor.delete(segment, state.len);
        }
    }
}

/// What the janitor is asked to do.
enum Job {
    /// Delete a delivered segment (number, bytes to give back to the spool's room).
    Delete(u64, u64),
    /// Make a spare segment unless one is ready.
    PrepareSpare,
}

/// Deletes delivered segments on its own thread, syncs the directory after each round of deletions, and keeps a
/// preallocated spare segment ready.
struct Janitor {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Janitor {
    fn start(dir: PathBuf, segment_bytes: u64, shared: Arc<Shared>) -> Janitor {
        let (jobs, receiver) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("spool-janitor".into())
            .spawn(move || janitor_run(&dir, segment_bytes, &shared, receiver))
            .expect("spawn spool janitor");
        Janitor { jobs: Some(jobs), thread: Some(thread) }
    }

    /// Deletes `segment` (of `len` bytes, given back to the spool's room once it is gone).
    fn delete(&self, segment: u64, len: u64) {
        if !self.send(Job::Delete(segment, len)) {
            // The janitor is gone (it panicked): the segment stays and its records replay at the next start.
            error!(segment, "spool: the janitor is not running; a delivered segment is left on disk");
        }
    }

    /// Prepares a spare segment, unless one is ready (a janitor that is gone leaves segments to grow).
    fn prepare_spare(&self) {
        self.send(Job::PrepareSpare);
    }

    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Waits for every deletion handed over so far, and the directory sync after them.
    fn finish(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn janitor_run(dir: &Path, segment_bytes: u64, shared: &Shared, jobs: mpsc::Receiver<Job>) {
    // A segment was deleted since the directory was last synced.
    let mut unsynced = false;
    // Spares made so far: each gets a name of its own.
    let mut spares = 0u64;
    loop {
        let next = if unsynced {
            jobs.recv_timeout(Duration::from_secs(1))
        } else {
            jobs.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        };
        let mut prepare = false;
        let closed = match next {
            Ok(first) => {
                for job in std::iter::once(first).chain(jobs.try_iter()) {
                    let (segment, len) = match job {
                        Job::Delete(segment, len) => (segment, len),
                        Job::PrepareSpare => {
                            prepare = true;
                            continue;
                        }
                    };
                    match fs::remove_file(segment_path(dir, segment)) {
                        Ok(()) => {
                            shared.release(len);
                            unsynced = true;
                        }
                        // Its records replay at the next start: duplicates, never a loss.
                        Err(err) => error!(segment, error = %err, "spool: cannot delete a delivered segment"),
                    }
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        if unsynced {
            match seam::fail_io("spool.delete").and_then(|()| sync_dir(dir)) {
                Ok(()) => unsynced = false,
                // Tried again within a second; a deletion that is lost in a crash only replays duplicates.
                Err(err) => warn!(error = %err, "spool: cannot sync the directory after deleting segments"),
            }
        }
        if closed {
            // The spare holds nothing; the next open would delete it anyway.
            if let Some(spare) = shared.spare.lock().expect("spare lock").take() {
                let _ = fs::remove_file(spare);
            }
            return;
        }
        // After the deletions: they give back the disk space a spare needs.
        if prepare && shared.spare.lock().expect("spare lock").is_none() {
            spares += 1;
            prepare_spare(&dir.join(format!("{SPARE_PREFIX}{spares}{SPARE_SUFFIX}")), dir, segment_bytes, shared);
        }
    }
}

/// A spare segment's zeros are written and sent to the disk this many bytes at a time.
const SPARE_CHUNK_BYTES: usize = 256 * 1024;

/// Starts writeback of `len` bytes of `file` from `offset` and waits for it (`sync_file_range`; the block
/// allocation and size are made durable by the `fdatasync` after the last chunk).
fn write_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range(2) on a descriptor this function borrows; no memory is passed.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes the spare `path`: `segment_bytes` zeros, synced (so that its blocks and length are on disk before a
/// frame goes into it), then marks it ready. Skipped when the disk would keep less than two segments and
/// [`SPARE_FREE_MARGIN`] free; on any failure the file is removed and the next segment grows instead.
fn prepare_spare(path: &Path, dir: &Path, segment_bytes: u64, shared: &Shared) {
    match free_disk_bytes(dir) {
        Ok(free) if free >= 2 * segment_bytes + SPARE_FREE_MARGIN => {}
        // Not worth a log line per rotation: a nearly full disk is shown by readiness and the spool metrics.
        _ => return,
    }
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new().create_new(true).write(true).open(path)?;
        let zeros = vec![0u8; SPARE_CHUNK_BYTES];
        let mut written = 0;
        while written < segment_bytes {
            let n = (segment_bytes - written).min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            // Out to the disk a chunk at a time: one sync of a whole segment would hold the device for
            // milliseconds, and every group commit behind it.
            write_out(&file, written, n as u64)?;
            written += n as u64;
        }
        seam::fail_io("spool.prepare")?;
        file.sync_data()
    })();
    match written {
        // The file is closed: nothing writes to it again but the writer, once it has taken it.
        Ok(()) => *shared.spare.lock().expect("spare lock") = Some(path.to_owned()),
        Err(err) => {
            warn!(error = %err, "spool: cannot prepare a preallocated segment; the next one grows instead");
            let _ = fs::remove_file(path);
        }
    }
}

/// Scans one segment: damaged bytes between valid frames are moved to `quarantine/` and counted, a torn tail
/// (bytes after the last valid frame that do not form one: a write a crash cut short, never acknowledged) is
/// kept there too, and the file is rewritten with only its valid frames. Returns the offsets of those frames and
/// where the written bytes end (a preallocated segment's zeros after them are room, not damage).
fn recover_segment(dir: &Path, segment: u64, path: &Path, metrics: &Metrics) -> Result<(Vec<u64>, u64), SpoolError> {
    let data = fs::read(path)?;
    let scanned = scan::scan_segment(&data);
    if scanned.damage.is_empty() {
        return Ok((scanned.frames.iter().map(|frame| frame.offset).collect(), scanned.end));
    }
    for damage in &scanned.damage {
        let bytes = &data[damage.offset as usize..(damage.offset + damage.len) as usize];
        if damage.kind.is_tail() {
            quarantine(dir, segment, damage.offset as usize, bytes, "torn tail (crash mid-write)")?;
        } else {
            quarantine(dir, segment, damage.offset as usize, bytes, "damaged frame")?;
            metrics.spool_quarantined.inc();
        }
    }
    let mut offsets = Vec::with_capacity(scanned.frames.len());
    let mut rewritten = Vec::with_capacity(data.len());
    for frame in &scanned.frames {
        offsets.push(rewritten.len() as u64);
        rewritten.extend_from_slice(&data[frame.offset as usize..frame.offset as usize + frame.len]);
    }
    let temporary = path.with_extension("rewrite");
    {
        let mut file = File::create(&temporary)?;
        file.write_all(&rewritten)?;
        file.sync_all()?;
    }
    seam::fail_io("spool.rename")?;
    fs::rename(&temporary, path)?;
    sync_dir(dir)?;
    Ok((offsets, rewritten.len() as u64))
}

fn quarantine(dir: &Path, segment: u64, offset: usize, bytes: &[u8], why: &str) -> Result<(), SpoolError> {
    let quarantine_dir = dir.join("quarantine");
    if !quarantine_dir.exists() {
        fs::create_dir_all(&quarantine_dir)?;
        sync_dir(dir)?;
    }
    // Unique: a later spool whose segment numbers start again at 1 must not overwrite an earlier quarantine.
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let path = quarantine_dir.join(format!("segment-{segment:016}-at-{offset}-{stamp}-{}.bin", std::process::id()));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    sync_dir(&quarantine_dir)?;
    error!(path = %path.display(), bytes = bytes.len(), reason = why, "spool: damaged bytes moved to quarantine");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seams are process-wide: a test that writes, reads or recovers a spool takes the lock the `seams` tests
    /// hold (FailScenario's, which also clears every seam), so that a seam one of them sets cannot fire in it.
    fn apart_from_seams() -> fail::FailScenario<'static> {
        fail::FailScenario::setup()
    }

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig { dir: dir.to_owned(), max_bytes: 1 << 20, segment_bytes: 4096 }
    }

    /// A spool of [`config`] in `dir`, with metrics of its own.
    fn open_default(dir: &Path) -> Arc<Spool> {
        Spool::open(config(dir), Arc::new(Metrics::new())).unwrap()
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
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        let mut places = Vec::new();
        for i in 0..40 {
            places.push(spool.append(frame_for(i)).unwrap().await.unwrap());
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
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let spool =
            Spool::open(SpoolConfig { max_bytes: 1000, ..config(dir.path()) }, Arc::new(Metrics::new())).unwrap();
        spool.append(frame_for(0)).unwrap().await.unwrap();
        spool.append(frame_for(1)).unwrap().await.unwrap();
        assert!(matches!(spool.append(frame_for(2)), Err(SpoolError::Full)));
        assert!(!spool.has_headroom(400));
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_corrupt_record_quarantined() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        for i in 0..3 {
            spool.append(frame_for(i)).unwrap().await.unwrap();
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

    fn quarantine_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join("quarantine"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_frame_whose_length_runs_past_the_end_does_not_take_the_frames_after_it() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        for i in 0..4 {
            spool.append(frame_for(i)).unwrap().await.unwrap();
        }
        spool.close();
        drop(spool);
        let path = segment_path(dir.path(), 1);
        let mut data = fs::read(&path).unwrap();
        let frame_len = frame_for(0).len();
        // The second frame's length field now claims more bytes than the file has.
        data[frame_len + 4..frame_len + 8].copy_from_slice(&(1_000_000u32).to_le_bytes());
        fs::write(&path, &data).unwrap();

        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        let recovered = drain(&spool);
        assert_eq!(keys(dir.path(), &recovered), vec!["k0", "k2", "k3"]);
        assert_eq!(metrics.spool_quarantined.get(), 1, "only the damaged frame is counted");
        let quarantined = quarantine_files(dir.path());
        assert_eq!(quarantined.len(), 1, "{quarantined:?}");
        let bytes = fs::read(dir.path().join("quarantine").join(&quarantined[0])).unwrap();
        assert_eq!(bytes.len(), frame_len, "exactly the damaged frame's bytes are kept");
    }

    #[tokio::test]
    async fn quarantine_never_overwrites_an_earlier_file() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        for round in 0..2 {
            let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
            // Acknowledge what an earlier round left, so that segment numbering starts again at 1.
            for place in drain(&spool) {
                spool.ack(place);
            }
            spool.close();
            drop(spool);
            for path in fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.path()) {
                if segment_number(&path).is_some() {
                    fs::remove_file(path).unwrap();
                }
            }
            let mut data = frame_for(round);
            data.extend_from_slice(&frame_for(10 + round)[..50]);
            fs::write(segment_path(dir.path(), 1), &data).unwrap();
            let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
            assert_eq!(drain(&spool).len(), 1);
        }
        assert_eq!(quarantine_files(dir.path()).len(), 2, "two torn tails of segment 1 at the same offset");
    }

    #[tokio::test]
    async fn an_unreadable_record_moves_to_quarantine_and_leaves_the_spool() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        let first = spool.append(frame_for(0)).unwrap().await.unwrap();
        let second = spool.append(frame_for(1)).unwrap().await.unwrap();
        // Damaged after it was written (a bad sector, say): the reader proves it undecodable.
        let path = segment_path(dir.path(), first.segment);
        let mut data = fs::read(&path).unwrap();
        data[first.offset as usize + 40] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let mut reader = SpoolReader::new(dir.path());
        assert!(matches!(reader.read(first), Err(SpoolError::Unreadable(..))));
        assert!(reader.read(second).is_ok());
        spool.quarantine_unreadable(first);
        spool.ack(second);
        assert_eq!(spool.close(), 0, "nothing left once both are settled");
        assert_eq!(metrics.spool_quarantined.get(), 1);
        assert_eq!(quarantine_files(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn a_delivered_active_segment_is_replaced_at_most_once_a_second() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let spool = open_default(dir.path());
        // Appends three frames (past a quarter of the 4 KiB segments), acknowledges them, and says where the
        // next append lands once the writer has settled the acknowledgements.
        let delivered_then_next = || async {
            let mut places = Vec::new();
            for i in 0..3 {
                places.push(spool.append(frame_for(i)).unwrap().await.unwrap());
            }
            for place in &places {
                spool.ack(*place);
            }
            tokio::time::sleep(ACK_SETTLE_INTERVAL * 4).await;
            (places[0].segment, spool.append(frame_for(9)).unwrap().await.unwrap())
        };
        let (first, next) = delivered_then_next().await;
        assert!(next.segment > first, "a delivered segment is replaced: {first} then {next:?}");
        spool.ack(next);
        let (second, again) = delivered_then_next().await;
        assert_eq!(again.segment, second, "replaced again within a second");
        spool.ack(again);
        tokio::time::sleep(EARLY_ROTATION_INTERVAL).await;
        let later = spool.append(frame_for(10)).unwrap().await.unwrap();
        assert!(later.segment > second, "replaced once a second has passed: {second} then {later:?}");
    }

    fn wait_for_spare(spool: &Spool) -> PathBuf {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(spare) = spool.shared.spare.lock().unwrap().clone() {
                return spare;
            }
            assert!(Instant::now() < deadline, "no spare segment prepared within 10 s");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn spares_in(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| is_spare(p)).collect()
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).unwrap().len()
    }

    #[tokio::test]
    async fn new_segments_are_preallocated_zeros_and_a_restart_reads_their_frames_up_to_the_zeros() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let config = SpoolConfig { dir: dir.path().to_owned(), max_bytes: 1 << 20, segment_bytes: 64 * 1024 };
        let spool = Spool::open(config.clone(), metrics.clone()).unwrap();
        let spare = wait_for_spare(&spool);
        assert_eq!(file_len(&spare), 64 * 1024, "the spare is a whole segment");
        assert!(fs::read(&spare).unwrap().iter().all(|&b| b == 0), "of zeros");

        // The first segment was made before any spare: it grows. Fill it; the next one is the spare.
        let lens: Vec<u64> = (0..400).map(|i| frame_for(i).len() as u64).collect();
        let mut places = Vec::new();
        for i in 0.. {
            places.push(spool.append(frame_for(i)).unwrap().await.unwrap());
            if places[i].segment != places[0].segment && places[i].offset > 0 {
                break;
            }
        }
        let (first, second) = (places[0].segment, places.last().unwrap().segment);
        assert_eq!(second, first + 1, "{places:?}");
        let in_first: u64 = places.iter().zip(&lens).filter(|(p, _)| p.segment == first).map(|(_, len)| len).sum();
        let total: u64 = lens[..places.len()].iter().sum();
        assert_eq!(file_len(&segment_path(dir.path(), first)), in_first, "grown");
        assert_eq!(
            file_len(&segment_path(dir.path(), second)),
            64 * 1024,
            "preallocated: its length is not its frames'"
        );
        // The spool's room counts frames, not zeros.
        assert_eq!(spool.used_bytes(), total);
        assert!(!spare.exists(), "the first spare became the second segment");
        let next_spare = wait_for_spare(&spool);
        assert_ne!(next_spare, spare, "each spare has a name of its own");
        spool.close();
        drop(spool);
        assert_eq!(spares_in(dir.path()), Vec::<PathBuf>::new(), "a clean close removes the spare");
        assert_eq!(file_len(&segment_path(dir.path(), second)), 64 * 1024);

        let spool = Spool::open(config, metrics.clone()).unwrap();
        let recovered = drain(&spool);
        let expected: Vec<String> = (0..places.len()).map(|i| format!("k{i}")).collect();
        assert_eq!(keys(dir.path(), &recovered), expected, "every frame, nothing from the zeros");
        assert!(!dir.path().join("quarantine").exists(), "the zeros are no damage");
        assert_eq!(metrics.spool_quarantined.get(), 0);
        assert_eq!(spool.used_bytes(), total, "room counted as before the restart");
        assert_eq!(metrics.spool_bytes.get(), total as i64);
    }

    /// Rotations as fast as appends come (a segment holds ten frames), while the janitor prepares a spare after
    /// each: the spare the writer takes is never one the janitor is still writing. Every acknowledged record
    /// reads back whole, before and after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn spares_taken_at_every_rotation_never_overwrite_acknowledged_frames() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig { dir: dir.path().to_owned(), max_bytes: 64 << 20, segment_bytes: 4096 };
        let spool = Spool::open(config.clone(), Arc::new(Metrics::new())).unwrap();
        let mut tasks = Vec::new();
        for writer in 0..8 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0..250 {
                    let n = writer * 1000 + i;
                    acked.push((n, spool.append(frame_for(n)).unwrap().await.unwrap()));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for task in tasks {
            acked.extend(task.await.unwrap());
        }
        let segments: std::collections::BTreeSet<u64> = acked.iter().map(|(_, place)| place.segment).collect();
        assert!(segments.len() > 100, "rotated at every few appends: {} segments", segments.len());
        let mut reader = SpoolReader::new(dir.path());
        for (n, place) in &acked {
            let record = reader.read(*place).unwrap_or_else(|err| panic!("record {n} at {place:?}: {err}"));
            assert_eq!(record.key, format!("k{n}").into_bytes(), "record {n} at {place:?}");
        }
        spool.close();
        drop(spool);
        let spool = Spool::open(config, Arc::new(Metrics::new())).unwrap();
        assert_eq!(drain(&spool).len(), acked.len(), "every acknowledged record is recovered");
        assert!(!dir.path().join("quarantine").exists(), "nothing damaged");
    }

    #[tokio::test]
    async fn a_spare_left_by_a_crash_is_made_again_and_a_torn_write_into_the_zeros_is_cut() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        // What a crash can leave: a half-written spare, and a preallocated segment whose last write stopped
        // inside a frame.
        let leftover = dir.path().join(format!("{SPARE_PREFIX}3{SPARE_SUFFIX}"));
        fs::write(&leftover, vec![0u8; 1000]).unwrap();
        let mut data: Vec<u8> = (0..2).flat_map(frame_for).collect();
        let whole = data.len();
        data.extend_from_slice(&frame_for(2)[..100]);
        data.resize(64 * 1024, 0);
        fs::write(segment_path(dir.path(), 7), &data).unwrap();

        let config = SpoolConfig { dir: dir.path().to_owned(), max_bytes: 1 << 20, segment_bytes: 64 * 1024 };
        let spool = Spool::open(config, Arc::new(Metrics::new())).unwrap();
        assert_eq!(keys(dir.path(), &drain(&spool)), vec!["k0", "k1"]);
        assert_eq!(file_len(&segment_path(dir.path(), 7)), whole as u64, "rewritten with its whole frames only");
        let torn: Vec<Vec<u8>> = fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(torn, vec![frame_for(2)[..100].to_vec()], "the torn frame kept, without the zeros after it");
        assert!(!leftover.exists(), "the crash's spare is deleted at open");
        let spare = wait_for_spare(&spool);
        assert_eq!(file_len(&spare), 64 * 1024, "and a whole one made");
        assert_eq!(spares_in(dir.path()), vec![spare]);
    }

    #[tokio::test]
    async fn close_reports_every_record_left_including_the_replay_queue() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
        for i in 0..5 {
            spool.append_for_replay(frame_for(i)).unwrap();
        }
        let place = spool.append(frame_for(5)).unwrap().await.unwrap();
        spool.ack(place);
        assert_eq!(spool.close(), 5);
    }

    #[tokio::test]
    async fn an_append_whose_caller_went_away_is_queued_for_replay() {
        let _seams = apart_from_seams();
        let dir = tempfile::tempdir().unwrap();
        let spool = open_default(dir.path());
        drop(spool.append(frame_for(0)).unwrap());
        let place = spool.next_to_replay(Duration::from_secs(5)).expect("queued for replay");
        assert_eq!(keys(dir.path(), &[place]), vec!["k0"]);
    }

    /// Seams are process-wide: these tests run one at a time, and apart from the others (FailScenario holds a
    /// lock, see `apart_from_seams`).
    #[cfg(feature = "failpoints")]
    mod seams {
        use super::*;

        #[tokio::test]
        async fn a_short_write_is_cut_back_and_the_records_after_it_are_where_their_references_say() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let metrics = Arc::new(Metrics::new());
            let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
            let a = spool.append(frame_for(0)).unwrap().await.unwrap();
            fail::cfg("spool.write", "1*return(short)").unwrap();
            assert!(spool.append(frame_for(1)).unwrap().await.is_err(), "the short write is refused");
            let c = spool.append(frame_for(2)).unwrap().await.unwrap();
            assert_eq!(keys(dir.path(), &[a, c]), vec!["k0", "k2"]);
            spool.close();
            drop(spool);
            let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
            assert_eq!(keys(dir.path(), &drain(&spool)), vec!["k0", "k2"]);
            assert_eq!(metrics.spool_quarantined.get(), 0, "nothing damaged was left behind");
            scenario.teardown();
        }

        #[tokio::test]
        async fn a_failed_truncate_seals_the_segment_and_later_records_stay_readable() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let metrics = Arc::new(Metrics::new());
            let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
            let a = spool.append(frame_for(0)).unwrap().await.unwrap();
            fail::cfg("spool.write", "1*return(short)").unwrap();
            fail::cfg("spool.truncate", "1*return").unwrap();
            assert!(spool.append(frame_for(1)).unwrap().await.is_err());
            let c = spool.append(frame_for(2)).unwrap().await.unwrap();
            assert_ne!(c.segment, a.segment, "a new segment after the damage");
            assert_eq!(keys(dir.path(), &[a, c]), vec!["k0", "k2"]);
            // Deleting the sealed segment gives back exactly what it took, partial frame included.
            spool.ack(a);
            let frame_len = frame_for(0).len() as u64;
            let settled = (0..100).find(|_| {
                std::thread::sleep(Duration::from_millis(10));
                spool.used_bytes() == frame_len
            });
            assert!(settled.is_some(), "used bytes {} after deleting the sealed segment", spool.used_bytes());
            spool.close();
            drop(spool);
            let spool = Spool::open(config(dir.path()), metrics.clone()).unwrap();
            assert_eq!(keys(dir.path(), &drain(&spool)), vec!["k2"]);
            scenario.teardown();
        }

        /// Holds the writer in the first append's write while three more queue up behind it, so that they
        /// share one batch, then applies `after` to the writes of that batch.
        async fn batch_of_three_behind_a_slow_write(spool: &Spool, after: &str) -> Vec<Result<RecordRef, SpoolError>> {
            fail::cfg("spool.write", &format!("1*sleep(300)->{after}")).unwrap();
            let first = spool.append(frame_for(0)).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let batch: Vec<_> = (1..4).map(|i| spool.append(frame_for(i)).unwrap()).collect();
            assert!(first.await.is_ok());
            let mut results = Vec::new();
            for written in batch {
                results.push(written.await);
            }
            results
        }

        #[tokio::test]
        async fn a_batch_is_written_with_one_write_and_retried_frame_by_frame_when_it_fails() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let spool = open_default(dir.path());
            // One failure, at the batch's first write: frame by frame (one write each) all three would lose the
            // first; as one run, the run fails and each frame is then written on its own.
            let results = batch_of_three_behind_a_slow_write(&spool, "1*return->off").await;
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
            let places: Vec<_> = results.into_iter().map(Result::unwrap).collect();
            assert_eq!(keys(dir.path(), &places), vec!["k1", "k2", "k3"]);
            spool.close();
            drop(spool);
            let spool = open_default(dir.path());
            assert_eq!(
                keys(dir.path(), &drain(&spool)),
                vec!["k0", "k1", "k2", "k3"],
                "nothing damaged, nothing twice"
            );
            scenario.teardown();
        }

        #[tokio::test]
        async fn deleting_a_delivered_segment_does_not_hold_up_the_next_commit() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let spool = open_default(dir.path());
            let mut places = Vec::new();
            while places.last().is_none_or(|place: &RecordRef| place.segment == places[0].segment) {
                places.push(spool.append(frame_for(places.len())).unwrap().await.unwrap());
            }
            // A deletion that takes 2 s (the seam sits in the directory sync after it).
            fail::cfg("spool.delete", "sleep(2000)").unwrap();
            let first_segment = places[0].segment;
            for place in places.iter().filter(|place| place.segment == first_segment) {
                spool.ack(*place);
            }
            let gone = (0..100).find(|_| {
                std::thread::sleep(Duration::from_millis(10));
                !segment_path(dir.path(), first_segment).exists()
            });
            assert!(gone.is_some(), "the delivered segment is deleted");
            let started = Instant::now();
            spool.append(frame_for(100)).unwrap().await.unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "a commit waited {:?} for a deletion",
                started.elapsed()
            );
            fail::remove("spool.delete");
            scenario.teardown();
        }

        #[tokio::test]
        async fn a_failed_write_in_a_batch_settles_the_frames_before_it() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let spool = open_default(dir.path());
            // The batch's one write fails, then frame by frame the second frame's write fails too.
            let results = batch_of_three_behind_a_slow_write(&spool, "1*return->1*off->1*return->off").await;
            assert!(results[0].is_ok() && results[1].is_err() && results[2].is_ok(), "{results:?}");
            for place in results.iter().filter_map(|r| r.as_ref().ok()) {
                spool.ack(*place);
            }
            spool.close();
            // Only what was refused is gone; nothing is pinned: the acked frames' segment was deleted at close.
            let left: Vec<_> =
                fs::read_dir(dir.path()).unwrap().filter_map(|e| segment_number(&e.unwrap().path())).collect();
            assert!(left.len() <= 1, "{left:?}");
            scenario.teardown();
        }

        #[tokio::test]
        async fn a_spare_that_cannot_be_prepared_leaves_segments_to_grow() {
            let scenario = fail::FailScenario::setup();
            fail::cfg("spool.prepare", "return").unwrap();
            let dir = tempfile::tempdir().unwrap();
            let spool = open_default(dir.path());
            let mut places = Vec::new();
            for i in 0..30 {
                places.push(spool.append(frame_for(i)).unwrap().await.unwrap());
            }
            let segments: std::collections::BTreeSet<u64> = places.iter().map(|p| p.segment).collect();
            assert!(segments.len() >= 3, "rotated: {segments:?}");
            for segment in segments {
                let frames: u64 =
                    (0..30).filter(|&i| places[i].segment == segment).map(|i| frame_for(i).len() as u64).sum();
                assert_eq!(
                    fs::metadata(segment_path(dir.path(), segment)).unwrap().len(),
                    frames,
                    "grown, not preallocated"
                );
            }
            assert_eq!(spares_in(dir.path()), Vec::<PathBuf>::new(), "a failed spare is removed");
            assert!(spool.shared.spare.lock().unwrap().is_none());
            spool.close();
            drop(spool);
            let spool = open_default(dir.path());
            assert_eq!(drain(&spool).len(), 30);
            scenario.teardown();
        }

        #[tokio::test]
        async fn a_failed_fsync_refuses_the_batch_seals_the_segment_and_still_replays_it() {
            let scenario = fail::FailScenario::setup();
            let dir = tempfile::tempdir().unwrap();
            let spool = open_default(dir.path());
            let before = spool.append(frame_for(0)).unwrap().await.unwrap();
            fail::cfg("spool.fsync", "1*return").unwrap();
            assert!(spool.append(frame_for(1)).unwrap().await.is_err());
            let after = spool.append(frame_for(2)).unwrap().await.unwrap();
            assert_ne!(after.segment, before.segment, "nothing more is written to a file whose fsync failed");
            let replayed = spool.next_to_replay(Duration::from_secs(2)).expect("the refused record is replayed");
            assert_eq!(keys(dir.path(), &[replayed]), vec!["k1"]);
            scenario.teardown();
        }
    }
}
