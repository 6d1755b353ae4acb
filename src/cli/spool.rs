//! `im-callback-forwarder spool stat|verify|export DIR`: read-only views of a disk spool.
//!
//! They open segments read-only, never truncate, rename, quarantine or lock, and are safe while a forwarder
//! serves from the same directory: a frame being written at that moment shows as a torn tail, and a segment
//! deleted meanwhile (all of it delivered) is skipped. They show every record still in the segments: a segment
//! is deleted only once Kafka has acknowledged all its records, so records already delivered from a segment
//! that still holds undelivered ones are listed too (as a crash would replay them).

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use base64::Engine as _;
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::spool::frame::SpooledRecord;
use crate::spool::list_segments;
use crate::spool::scan::{self, SegmentScan};

/// The spool tools.
#[derive(Subcommand)]
pub enum SpoolCommand {
    /// Count records, bytes and segments, records per topic, and the oldest and newest `received_at`.
    Stat {
        /// The spool directory (--spool-dir).
        dir: PathBuf,
    },
    /// Check every frame of every segment; report torn tails and corrupt regions with their byte offsets.
    /// Exits 1 if any is found.
    Verify {
        /// The spool directory (--spool-dir).
        dir: PathBuf,
    },
    /// Print every record in the spool as one JSON object per line: segment, offset, topic, key, headers,
    /// value (text when UTF-8, else base64, said by `value_encoding`).
    Export {
        /// The spool directory (--spool-dir).
        dir: PathBuf,
    },
}

/// Why a spool tool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolToolError {
    /// The directory cannot be listed.
    #[error("cannot read spool directory {}: {source}", .dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A segment cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Segment {
        /// The segment file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Standard output failed (e.g. a closed pipe).
    #[error("writing the output: {0}")]
    Output(#[source] io::Error),
}

/// Runs one spool tool.
pub fn run(command: SpoolCommand) -> Result<ExitCode, SpoolToolError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let ran = match command {
        SpoolCommand::Stat { dir } => stat(&dir, &mut out),
        SpoolCommand::Verify { dir } => verify(&dir, &mut out),
        SpoolCommand::Export { dir } => export(&dir, &mut out),
    }
    .and_then(|code| out.flush().map(|()| code).map_err(SpoolToolError::Output));
    match ran {
        // The reader went away (`export | head`): not a failure of the tool.
        Err(SpoolToolError::Output(err)) if err.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// Reads and scans every segment of `dir`, oldest first, one at a time (a large spool is never held in memory
/// whole), handing each to `visit` with its number, path, bytes and scan.
fn each_segment(
    dir: &Path,
    mut visit: impl FnMut(u64, &Path, &[u8], &SegmentScan) -> Result<(), SpoolToolError>,
) -> Result<(), SpoolToolError> {
    let listed = list_segments(dir).map_err(|source| SpoolToolError::Dir { dir: dir.to_owned(), source })?;
    for (number, path) in listed {
        match scan::read_segment(&path) {
            Ok(Some(data)) => visit(number, &path, &data, &scan::scan_segment(&data))?,
            Ok(None) => {} // deleted meanwhile: all of it delivered
            Err(source) => return Err(SpoolToolError::Segment { path, source }),
        }
    }
    Ok(())
}

fn received_at(record: &SpooledRecord) -> Option<SystemTime> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        received_at: Option<&'a str>,
    }
    let event: Event<'_> = serde_json::from_slice(&record.value).ok()?;
    humantime::parse_rfc3339_weak(event.received_at?).ok()
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn stat(dir: &Path, out: &mut impl Write) -> Result<ExitCode, SpoolToolError> {
    let (mut records, mut bytes, mut damaged) = (0u64, 0u64, 0usize);
    let mut names: Vec<String> = Vec::new();
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    let (mut oldest, mut newest): (Option<SystemTime>, Option<SystemTime>) = (None, None);
    each_segment(dir, |_, path, data, scanned| {
        names.push(file_name(path));
        // Written bytes: a preallocated segment's zeros after them are room.
        bytes += scanned.end;
        damaged += scanned.damage.len();
        for (_, record) in scan::records(data, scanned) {
            records += 1;
            if let Some(at) = received_at(&record) {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
                newest = Some(newest.map_or(at, |n| n.max(at)));
            }
            *topics.entry(record.topic).or_default() += 1;
        }
        Ok(())
    })?;
    let write = |out: &mut dyn Write| -> io::Result<()> {
        writeln!(out, "spool:    {}", dir.display())?;
        writeln!(out, "records:  {records}")?;
        writeln!(out, "bytes:    {bytes}")?;
        writeln!(out, "segments: {}", names.len())?;
        if let (Some(first), Some(last)) = (names.first(), names.last()) {
            writeln!(out, "          {first} .. {last}")?;
        }
        for (topic, count) in &topics {
            writeln!(out, "topic:    {topic}: {count}")?;
        }
        if let (Some(oldest), Some(newest)) = (oldest, newest) {
            writeln!(out, "oldest:   {} (received_at)", humantime::format_rfc3339_millis(oldest))?;
            writeln!(out, "newest:   {} (received_at)", humantime::format_rfc3339_millis(newest))?;
        }
        if damaged > 0 {
            writeln!(out, "damaged:  {damaged} region(s), not counted above (see `spool verify`)")?;
        }
        Ok(())
    };
    write(out).map_err(SpoolToolError::Output)?;
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path, out: &mut impl Write) -> Result<ExitCode, SpoolToolError> {
    let (mut segments, mut damaged_segments, mut regions, mut frames) = (0usize, 0usize, 0usize, 0usize);
    each_segment(dir, |_, path, data, scanned| {
        let name = file_name(path);
        segments += 1;
        frames += scanned.frames.len();
        if scanned.damage.is_empty() {
            let room = data.len() as u64 - scanned.end;
            let room = if room > 0 { format!(" (+{room} preallocated)") } else { String::new() };
            return writeln!(out, "{name}: ok, {} frames, {} bytes{room}", scanned.frames.len(), scanned.end)
                .map_err(SpoolToolError::Output);
        }
        damaged_segments += 1;
        for damage in &scanned.damage {
            regions += 1;
            writeln!(
                out,
                "{name}: {} at offset {} ({} bytes, to offset {}){}",
                damage.kind.describe(),
                damage.offset,
                damage.len,
                damage.offset + damage.len,
                if damage.kind == scan::DamageKind::TornTail {
                    ": a write cut short by a crash, or being written now if a forwarder is serving"
                } else {
                    ""
                }
            )
            .map_err(SpoolToolError::Output)?;
        }
        Ok(())
    })?;
    if regions == 0 {
        writeln!(out, "ok: {frames} frames in {segments} segments")
    } else {
        writeln!(
            out,
            "damaged: {regions} region(s) in {damaged_segments} of {segments} segments ({frames} valid frames); \
             the next start of a forwarder moves them to quarantine/"
        )
    }
    .map_err(SpoolToolError::Output)?;
    Ok(if regions == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A byte string as JSON: text when it is UTF-8, else base64 (and `false` for "is text").
fn bytes_json(bytes: &[u8]) -> (Value, bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Value::String(text.to_owned()), true),
        Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)), false),
    }
}

/// One record as an export line's JSON object.
pub fn record_json(segment: u64, offset: u64, record: &SpooledRecord) -> Value {
    let encoding = |text: bool| if text { "utf-8" } else { "base64" };
    let (key, key_text) = bytes_json(&record.key);
    let (value, value_text) = bytes_json(&record.value);
    let mut headers = Map::new();
    let mut base64_headers = Vec::new();
    for (name, bytes) in &record.headers {
        let (header, text) = bytes_json(bytes);
        if !text {
            base64_headers.push(Value::String(name.clone()));
        }
        headers.insert(name.clone(), header);
    }
    let mut line = json!({
        "segment": segment,
        "offset": offset,
        "topic": record.topic,
        "key": key,
        "key_encoding": encoding(key_text),
        "headers": headers,
        "value": value,
        "value_encoding": encoding(value_text),
    });
    if !base64_headers.is_empty() {
        line["base64_headers"] = Value::Array(base64_headers);
    }
    line
}

fn export(dir: &Path, out: &mut impl Write) -> Result<ExitCode, SpoolToolError> {
    each_segment(dir, |number, path, data, scanned| {
        for (offset, record) in scan::records(data, scanned) {
            serde_json::to_writer(&mut *out, &record_json(number, offset, &record))
                .map_err(|err| SpoolToolError::Output(err.into()))?;
            out.write_all(b"\n").map_err(SpoolToolError::Output)?;
        }
        if !scanned.damage.is_empty() {
            eprintln!("{}: {} damaged region(s) skipped (see `spool verify`)", path.display(), scanned.damage.len());
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_carry_text_or_base64_and_say_which() {
        let record = SpooledRecord {
            topic: "t".into(),
            key: b"@TGS#1".to_vec(),
            value: vec![0xff, 0x00],
            headers: vec![("event_id".into(), b"abc".to_vec()), ("bin".into(), vec![0xfe])],
        };
        let line = record_json(3, 40, &record);
        assert_eq!(line["segment"], 3);
        assert_eq!(line["offset"], 40);
        assert_eq!(line["key"], "@TGS#1");
        assert_eq!(line["key_encoding"], "utf-8");
        assert_eq!(line["value"], "/wA=");
        assert_eq!(line["value_encoding"], "base64");
        assert_eq!(line["headers"]["event_id"], "abc");
        assert_eq!(line["headers"]["bin"], "/g==");
        assert_eq!(line["base64_headers"], json!(["bin"]));
    }

    #[test]
    fn received_at_is_read_from_the_event() {
        let mut record = SpooledRecord {
            topic: "t".into(),
            key: vec![],
            value: br#"{"received_at":"2022-12-09T08:26:55.007Z","x":1}"#.to_vec(),
            headers: vec![],
        };
        let at = received_at(&record).unwrap();
        assert_eq!(humantime::format_rfc3339_millis(at).to_string(), "2022-12-09T08:26:55.007Z");
        record.value = b"not json".to_vec();
        assert!(received_at(&record).is_none());
    }
}
