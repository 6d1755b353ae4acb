//! The disk's own limit for disk durability: how long an append of one record plus `fdatasync` takes on the
//! filesystem of a directory, the way the spool's writer does it (`File::write_all` at the end of the file,
//! then `File::sync_data`). A disk-mode acknowledgement cannot be faster than one of these; at
//! saturation one covers a whole group commit.
//!
//! ```text
//! cargo run --release --example fsync_probe -- --dir DIR [--bytes 1200] [--count 2000] [--batch 1]
//! ```
//! `--batch N` appends N records (one `write` each, as the writer does) before each sync. Two files are
//! probed in turn: a growing one (each sync also records the new file size, as for a spool segment) and one
//! preallocated with zeros (the data blocks exist: a sync writes only data). Prints one JSON line per file:
//! `{"file":"growing","bytes":..,"batch":..,"count":..,"p50_ms":..,"p99_ms":..,"max_ms":..}`. The files are
//! removed afterwards.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    dir: PathBuf,
    bytes: usize,
    count: usize,
    batch: usize,
}

fn parse_args() -> Args {
    let mut args = Args { dir: PathBuf::from("."), bytes: 1200, count: 2000, batch: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--bytes" => args.bytes = value.parse().expect("--bytes N"),
            "--count" => args.count = value.parse().expect("--count N"),
            "--batch" => args.batch = value.parse::<usize>().expect("--batch N").max(1),
            _ => panic!("unknown flag {flag}"),
        }
    }
    args
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn probe(args: &Args, name: &str, preallocate: bool) -> std::io::Result<()> {
    let path = args.dir.join(format!(".imcf-fsync-probe-{}-{name}", std::process::id()));
    let total = args.bytes * args.batch * args.count;
    if preallocate {
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(zeros.len());
            file.write_all(&zeros[..n])?;
            left -= n;
        }
        file.sync_all()?;
    }
    let mut file = if preallocate {
        let mut file = OpenOptions::new().write(true).open(&path)?;
        file.seek(SeekFrom::Start(0))?;
        file
    } else {
        // The spool opens its segments for appending; a new empty file written from offset 0 is the same.
        OpenOptions::new().create(true).truncate(true).write(true).open(&path)?
    };
    let record: Vec<u8> = (0..args.bytes).map(|i| b'a' + (i % 26) as u8).collect();
    let mut samples = Vec::with_capacity(args.count);
    for _ in 0..args.count {
        let started = Instant::now();
        for _ in 0..args.batch {
            file.write_all(&record)?;
        }
        file.sync_data()?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    println!(
        "{{\"file\":\"{name}\",\"bytes\":{},\"batch\":{},\"count\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        args.bytes,
        args.batch,
        args.count,
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        samples[samples.len() - 1],
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    let args = parse_args();
    fs::create_dir_all(&args.dir)?;
    probe(&args, "growing", false)?;
    probe(&args, "preallocated", true)?;
    Ok(())
}
