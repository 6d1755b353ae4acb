//! `--dev` mode: librdkafka's in-memory mock cluster, and a consumer that logs every record read back from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tracing::{info, warn};

/// A single-broker mock cluster, alive until dropped. It lives on its own thread because librdkafka's
/// mock handle is not `Send`.
pub struct EmbeddedKafka {
    bootstrap_servers: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts the cluster and creates `topics` with one partition each.
    pub fn start(topics: &[&str]) -> Result<Self, KafkaError> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(err) = cluster.create_topic(topic, 1, 1) {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Blocks until the sender is dropped or signals: the cluster must outlive every client.
                let _ = stop_rx.recv();
            })
            .expect("spawn embedded Kafka thread");
        let bootstrap_servers =
            ready_rx.recv().unwrap_or(Err(KafkaError::MockCluster(rdkafka::types::RDKafkaErrorCode::Fail)))?;
        Ok(EmbeddedKafka { bootstrap_servers, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// `bootstrap.servers` of the mock cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Logs every record of a topic, so a newcomer sees events arrive without Kafka tools.
pub struct ReadBackLogger {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReadBackLogger {
    /// Starts consuming `topics` from the beginning.
    pub fn start(bootstrap_servers: &str, topics: &[&str]) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap_servers)
            .set("group.id", "im-callback-forwarder-dev-read-back")
            .set("enable.auto.commit", "false")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for topic in topics {
            assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("dev-read-back".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match consumer.poll(Duration::from_millis(200)) {
                        Some(Ok(record)) => info!(
                            topic = record.topic(),
                            offset = record.offset(),
                            key = %String::from_utf8_lossy(record.key().unwrap_or_default()),
                            value = %String::from_utf8_lossy(record.payload().unwrap_or_default()),
                            "event read back from Kafka"
                        ),
                        Some(Err(err)) => warn!(error = %err, "dev read-back consumer error"),
                        None => {}
                    }
                }
            })
            .expect("spawn read-back thread");
        Ok(ReadBackLogger { stop, thread: Some(thread) })
    }
}

impl Drop for ReadBackLogger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
