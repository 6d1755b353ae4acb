//! The spool directory's lock: `DIR/LOCK`, held with `flock(2)` for as long as a forwarder serves from the
//! directory, and holding that forwarder's PID so that a second one can say who is in the way.
//!
//! `flock` locks belong to the open file, so the kernel releases the lock when the process ends however it ends
//! (`kill -9` included): a stale `LOCK` file left behind never blocks a start. The operator tools
//! (`im-callback-forwarder spool ...`) only read and never take it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use super::SpoolError;

/// Name of the lock file in the spool directory.
pub const LOCK_FILE: &str = "LOCK";

/// An exclusive lock on a spool directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir` without waiting, and writes this process's PID into it;
    /// [`SpoolError::Locked`] with the holder's PID when another process has it.
    pub fn acquire(dir: &Path) -> Result<DirLock, SpoolError> {
        let path = dir.join(LOCK_FILE);
        // Never truncated before the lock is ours: the holder's PID must stay readable.
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(errno) if errno == rustix::io::Errno::WOULDBLOCK => {
                return Err(SpoolError::Locked { dir: dir.to_owned(), pid: holder(&mut file), lock_file: path });
            }
            Err(errno) => return Err(SpoolError::Io(io::Error::from(errno))),
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        Ok(DirLock { _file: file })
    }
}

fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The lock file's path in `dir`.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        match DirLock::acquire(dir.path()) {
            Err(SpoolError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let again = DirLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(lock_path(dir.path())).unwrap().trim(), std::process::id().to_string());
        drop(again);
    }
}
