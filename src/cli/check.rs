//! `im-callback-forwarder check`: with the flags and environment of serving, validates the configuration as
//! serving would, asks Kafka for each configured topic by name (partitions and leaders), and checks the spool
//! directory (exists or can be created, writable, free space, the read-only frame scan). One line per check,
//! `ok ...` or `FAIL ...: reason`; exit 0 only when all pass.
//!
//! It never writes to the topics (no record is produced, and topics are not auto-created by the metadata
//! requests), and Kafka gets `--timeout` seconds in all: a hung or absent broker is a FAIL, not a hang. In the
//! spool directory it only creates and removes a probe file (and, if the directory is missing, creates it and
//! removes it again); it does not take the directory's lock, so it is safe next to a serving forwarder.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{Args, Config, Durability, KafkaTarget, SpoolConfig, MAX_SECS};
use crate::sink::{spool_ready_headroom, validate_properties, DEFAULT_PRODUCER_PROPERTIES};
use crate::spool::{free_disk_bytes, list_segments, scan};

/// `check` flags: those of serving, and the time Kafka may take.
#[derive(ClapArgs)]
pub struct CheckArgs {
    /// The serving flags (and their IMCF_* environment variables).
    #[command(flatten)]
    pub serve: Args,
    /// Seconds the Kafka checks may take in all; an unreachable or hung broker fails the check after this long.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=MAX_SECS))]
    pub timeout: u64,
}

/// Why `check` could not run (a failed check is a `FAIL` line and exit 1, not an error).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Standard output failed.
    #[error("writing the output: {0}")]
    Output(#[source] io::Error),
}

/// One check's result: `Ok(what and detail)` or `Err((what, reason))`.
type Line = Result<String, (String, String)>;

/// Writes the lines and remembers whether any failed.
struct Report<W: Write> {
    out: W,
    failed: usize,
}

impl<W: Write> Report<W> {
    fn line(&mut self, line: Line) -> Result<(), CheckError> {
        match line {
            Ok(text) => writeln!(self.out, "ok {text}"),
            Err((what, reason)) => {
                self.failed += 1;
                writeln!(self.out, "FAIL {what}: {reason}")
            }
        }
        .and_then(|()| self.out.flush())
        .map_err(CheckError::Output)
    }
}

/// Runs every check; exit 0 when all pass, 1 otherwise.
pub fn run(args: CheckArgs) -> Result<ExitCode, CheckError> {
    let stdout = io::stdout();
    let mut report = Report { out: stdout.lock(), failed: 0 };
    let config = match Config::try_from(args.serve) {
        Ok(config) => config,
        Err(err) => {
            report.line(Err(("configuration".into(), err.to_string())))?;
            return Ok(ExitCode::from(1));
        }
    };
    report.line(Ok(describe(&config)))?;
    report.line(match validate_properties(&config.kafka_properties) {
        Ok(()) => Ok(format!("kafka properties: valid ({} -X override(s))", config.kafka_properties.len())),
        Err(err) => Err(("kafka properties".into(), err.to_string())),
    })?;
    if let Some(spool) = &config.spool {
        for line in check_spool(spool) {
            report.line(line)?;
        }
    }
    let mut topics: Vec<String> = [config.topic.as_str(), config.dead_letter_topic.as_str()]
        .into_iter()
        .chain(config.routes.topics())
        .map(str::to_owned)
        .collect();
    topics.sort_unstable();
    topics.dedup();
    match &config.kafka {
        KafkaTarget::Embedded => {
            report.line(Ok("kafka: --dev uses an embedded in-memory cluster; nothing to check".into()))?
        }
        KafkaTarget::Brokers(brokers) => {
            check_kafka(&mut report, brokers, &config.kafka_properties, &topics, Duration::from_secs(args.timeout))?
        }
    }
    Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The configuration line: apps, Kafka, topics, durability.
fn describe(config: &Config) -> String {
    let apps: Vec<String> = config
        .apps
        .iter()
        .map(|(id, tokens)| match tokens.len() {
            0 => format!("{id} (unsigned)"),
            n => format!("{id} ({n} token(s))"),
        })
        .collect();
    let kafka = match &config.kafka {
        KafkaTarget::Brokers(brokers) => brokers.clone(),
        KafkaTarget::Embedded => "--dev".into(),
    };
    let durability = match config.durability {
        Durability::Memory => "memory",
        Durability::Disk => "disk",
    };
    format!(
        "configuration: app(s) {}; kafka {kafka}; topic {}, dead letters {}, {} route(s); durability {durability}; {}",
        apps.join(", "),
        config.topic,
        config.dead_letter_topic,
        config.routes.topics().len(),
        match &config.spool {
            Some(spool) => format!("spool {}", spool.dir.display()),
            None => "no spool".into(),
        }
    )
}

/// The spool directory: exists (or can be created), writable, free space, and the frame scan.
fn check_spool(spool: &SpoolConfig) -> Vec<Line> {
    let dir = &spool.dir;
    let what = |check: &str| format!("spool {check} {}", dir.display());
    let mut lines = Vec::new();
    // Directories this check created, innermost last; removed again at the end.
    let mut created: Vec<PathBuf> = Vec::new();
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => lines.push(Ok(format!("{}: exists", what("directory")))),
        Ok(_) => {
            lines.push(Err((what("directory"), "exists but is not a directory".into())));
            return lines;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            let mut missing: Vec<PathBuf> = dir.ancestors().take_while(|p| !p.exists()).map(Path::to_owned).collect();
            missing.reverse();
            match fs::create_dir_all(dir) {
                Ok(()) => {
                    created = missing;
                    lines.push(Ok(format!("{}: missing, can be created (created for this check)", what("directory"))))
                }
                Err(err) => {
                    lines.push(Err((what("directory"), format!("missing and cannot be created: {err}"))));
                    return lines;
                }
            }
        }
        Err(err) => {
            lines.push(Err((what("directory"), err.to_string())));
            return lines;
        }
    }
    let probe = dir.join(format!(".imcf-check-{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| file.write_all(b"im-callback-forwarder check\n").and_then(|()| file.sync_all()));
    let removed = if written.is_ok() || probe.exists() { fs::remove_file(&probe) } else { Ok(()) };
    lines.push(match (written, removed) {
        (Ok(()), Ok(())) => Ok(format!("{}: created, fsynced and removed a probe file", what("writable"))),
        (Err(err), _) => Err((what("writable"), format!("cannot create {}: {err}", probe.display()))),
        (Ok(()), Err(err)) => Err((what("writable"), format!("cannot remove {}: {err}", probe.display()))),
    });
    let headroom = spool_ready_headroom(spool.max_bytes);
    lines.push(match free_disk_bytes(dir) {
        Ok(free) if free < headroom => Err((
            what("free space"),
            format!("{} free; /readyz fails below {} (the disk is full)", mib(free), mib(headroom)),
        )),
        Ok(free) => Ok(format!(
            "{}: {} free on its filesystem, --spool-max-bytes {}{}",
            what("free space"),
            mib(free),
            mib(spool.max_bytes),
            if free < spool.max_bytes { " (the disk fills up before the spool's limit)" } else { "" }
        )),
        Err(err) => Err((what("free space"), format!("statvfs: {err}"))),
    });
    lines.push(
        scan_spool(dir).map(|text| format!("{}: {text}", what("segments"))).map_err(|why| (what("segments"), why)),
    );
    for path in created.iter().rev() {
        let _ = fs::remove_dir(path);
    }
    lines
}

/// The read-only scan of `spool verify`: every frame of every segment.
fn scan_spool(dir: &Path) -> Result<String, String> {
    let segments = list_segments(dir).map_err(|err| format!("cannot list: {err}"))?;
    let (mut count, mut frames, mut bytes) = (0usize, 0usize, 0u64);
    let mut damage = Vec::new();
    for (_, path) in &segments {
        let data = match scan::read_segment(path) {
            Ok(Some(data)) => data,
            Ok(None) => continue, // deleted meanwhile: all of it delivered
            Err(err) => return Err(format!("cannot read {}: {err}", path.display())),
        };
        let scanned = scan::scan_segment(&data);
        count += 1;
        frames += scanned.frames.len();
        // Written bytes: the zeros of a preallocated segment are room.
        bytes += scanned.end;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        for region in &scanned.damage {
            damage.push(format!(
                "{name}: {} at offset {} ({} bytes)",
                region.kind.describe(),
                region.offset,
                region.len
            ));
        }
    }
    if damage.is_empty() {
        Ok(format!("{frames} valid frame(s) in {count} segment(s), {bytes} bytes, no damage"))
    } else {
        Err(format!(
            "{} damaged region(s) ({}); the next start moves them to quarantine/ (details: `spool verify {}`; a torn \
             tail can also be a write under way if a forwarder is serving)",
            damage.len(),
            damage.join("; "),
            dir.display()
        ))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Asks Kafka for every topic by name, on a thread, and reports what came back within `timeout`.
fn check_kafka<W: Write>(
    report: &mut Report<W>,
    brokers: &str,
    properties: &[(String, String)],
    topics: &[String],
    timeout: Duration,
) -> Result<(), CheckError> {
    let deadline = Instant::now() + timeout;
    let (sender, lines) = mpsc::channel::<Line>();
    let (brokers, properties, topics) = (brokers.to_owned(), properties.to_vec(), topics.to_vec());
    let label = format!("kafka {brokers}");
    // Not joined: if librdkafka hangs, the process exits without it.
    std::thread::Builder::new()
        .name("check-kafka".into())
        .spawn(move || ask_kafka(&brokers, &properties, &topics, deadline, &sender))
        .map_err(CheckError::Output)?;
    loop {
        // A little grace over the deadline: the thread's own requests time out at it.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(500);
        match lines.recv_timeout(wait) {
            Ok(line) => report.line(line)?,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return report.line(Err((label, format!("no answer within --timeout {} s", timeout.as_secs()))));
            }
        }
    }
}

fn ask_kafka(
    brokers: &str,
    properties: &[(String, String)],
    topics: &[String],
    deadline: Instant,
    out: &mpsc::Sender<Line>,
) {
    let label = format!("kafka {brokers}");
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in DEFAULT_PRODUCER_PROPERTIES {
        config.set(*key, *value);
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    // Asking for a missing topic by name must not create it.
    config.set("allow.auto.create.topics", "false");
    let producer: BaseProducer = match config.create() {
        Ok(producer) => producer,
        Err(err) => {
            let _ = out.send(Err((label, format!("cannot create a client: {err}"))));
            return;
        }
    };
    let mut connected = false;
    for topic in topics {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let metadata = match producer.client().fetch_metadata(Some(topic), remaining) {
            Ok(metadata) => metadata,
            Err(err) => {
                let reason = if connected {
                    format!("metadata request failed: {err}")
                } else {
                    format!("no metadata answer within --timeout: {err}")
                };
                let _ = out.send(Err((if connected { format!("topic {topic}") } else { label.clone() }, reason)));
                if !connected {
                    for topic in topics {
                        let _ = out.send(Err((format!("topic {topic}"), "not checked: Kafka did not answer".into())));
                    }
                    return;
                }
                continue;
            }
        };
        let broker_name = |id: i32| {
            metadata
                .brokers()
                .iter()
                .find(|b| b.id() == id)
                .map_or_else(|| format!("broker {id}"), |b| format!("broker {id} ({}:{})", b.host(), b.port()))
        };
        if !connected {
            connected = true;
            let listed: Vec<String> = metadata.brokers().iter().map(|b| broker_name(b.id())).collect();
            let _ = out.send(Ok(format!("{label}: answered, {} broker(s): {}", listed.len(), listed.join(", "))));
        }
        let what = format!("topic {topic}");
        let line = match metadata.topics().iter().find(|t| t.name() == topic.as_str()) {
            None => Err((what, "not in the metadata answer".into())),
            Some(found) => match found.error() {
                Some(err) => {
                    let code = RDKafkaErrorCode::from(err);
                    let reason = if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                        "does not exist (create it; the forwarder never creates topics)".to_owned()
                    } else {
                        format!("{code:?}: {code}")
                    };
                    Err((what, reason))
                }
                None if found.partitions().is_empty() => Err((what, "no partitions".into())),
                None => {
                    let leaderless: Vec<String> = found
                        .partitions()
                        .iter()
                        .filter(|p| p.leader() < 0 || p.error().is_some())
                        .map(|p| p.id().to_string())
                        .collect();
                    let leaders: Vec<String> =
                        found.partitions().iter().map(|p| format!("{}: {}", p.id(), broker_name(p.leader()))).collect();
                    if leaderless.is_empty() {
                        Ok(format!("{what}: {} partition(s), leaders: {}", leaders.len(), leaders.join(", ")))
                    } else {
                        Err((what, format!("partition(s) {} have no leader", leaderless.join(", "))))
                    }
                }
            },
        };
        let _ = out.send(line);
    }
}
