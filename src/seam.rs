//! Fault-injection seams: named points at each write, fsync, rename, read and produce step of the spool and
//! the Kafka sink, where a test makes that step fail or the process die. Built on the `fail` crate and compiled
//! to nothing unless the `failpoints` cargo feature is on (it is only in the test command).
//!
//! A seam is configured with the `fail` crate's action syntax, at start through the `FAILPOINTS` environment
//! variable (`name=action;name=action`) or at run time through the admin listener (`PUT /failpoints/NAME`
//! with the action as body, `DELETE` to clear). `return` makes the step fail with EIO; `return(enospc)` with
//! ENOSPC; `return(short)` makes a write stop halfway and fail; `return(abort)` kills the process on the spot
//! (SIGABRT: no destructor, no flush, like `kill -9`); `return(fatal)` at `kafka.produce` raises a fatal
//! producer error through librdkafka's `rd_kafka_test_fatal_error`. `N*action` and `off` work as documented
//! by `fail`.

use std::io;

/// Every seam, in the order a record meets them.
pub const SEAMS: &[&str] = &[
    // Appending a frame to the active segment.
    "spool.write",
    // The group commit's fdatasync.
    "spool.fsync",
    // Undoing a failed write (truncating the segment back).
    "spool.truncate",
    // Creating the next segment (and syncing the directory).
    "spool.rotate",
    // Deleting a delivered segment (and syncing the directory).
    "spool.delete",
    // Preparing the preallocated spare segment (between writing its zeros and syncing them).
    "spool.prepare",
    // Replacing a damaged segment by its repaired copy at recovery.
    "spool.rename",
    // Reading a spooled record back for replay.
    "spool.read",
    // Handing a record to the producer.
    "kafka.produce",
];

/// What a test asked a seam to do.
#[derive(Debug)]
pub enum Fault {
    /// Fail the step with this error.
    Error(io::Error),
    /// Write half of the data, then fail (for writes).
    Short,
    /// Raise a fatal producer error (for `kafka.produce`).
    Fatal,
}

/// The fault configured at `name`, if any; never returns when the test asked for `abort`.
#[inline]
pub fn check(name: &'static str) -> Option<Fault> {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(name, |argument| fault(name, argument.as_deref()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Fails with the configured error when a test asked this step to fail (a `short` write counts as a failure).
#[inline]
pub fn fail_io(name: &'static str) -> io::Result<()> {
    match check(name) {
        None | Some(Fault::Fatal) => Ok(()),
        Some(Fault::Error(err)) => Err(err),
        Some(Fault::Short) => Err(io::Error::new(io::ErrorKind::WriteZero, format!("injected short write at {name}"))),
    }
}

#[cfg(feature = "failpoints")]
fn fault(name: &str, argument: Option<&str>) -> Fault {
    match argument {
        Some("abort") => {
            eprintln!("seam {name}: injected abort");
            std::process::abort()
        }
        Some("short") => Fault::Short,
        Some("fatal") => Fault::Fatal,
        Some("enospc") => Fault::Error(io::Error::from_raw_os_error(libc_enospc())),
        _ => Fault::Error(io::Error::other(format!("injected I/O error at {name}"))),
    }
}

#[cfg(feature = "failpoints")]
const fn libc_enospc() -> i32 {
    // ENOSPC is 28 on every Linux architecture.
    28
}

/// Applies `FAILPOINTS` (`name=action;...`) from the environment; a no-op without the feature.
pub fn configure_from_env() {
    #[cfg(feature = "failpoints")]
    if let Ok(spec) = std::env::var("FAILPOINTS") {
        for entry in spec.split(';').filter(|e| !e.trim().is_empty()) {
            if let Some((name, actions)) = entry.split_once('=') {
                if let Err(err) = fail::cfg(name.trim(), actions.trim()) {
                    eprintln!("FAILPOINTS: {name}: {err}");
                }
            }
        }
    }
}

/// Configures (`Some(actions)`) or clears (`None`) a seam at run time; `Err` without the feature or for a bad
/// action.
pub fn configure(name: &str, actions: Option<&str>) -> Result<(), String> {
    #[cfg(feature = "failpoints")]
    {
        if !SEAMS.contains(&name) {
            return Err(format!("no seam named {name}"));
        }
        match actions {
            Some(actions) => fail::cfg(name, actions),
            None => {
                fail::remove(name);
                Ok(())
            }
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, actions);
        Err("fault injection is not compiled in (cargo feature failpoints)".into())
    }
}
