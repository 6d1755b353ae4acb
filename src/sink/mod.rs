//! The Kafka sink: where accepted events leave the process, and the embedded cluster of `--dev`.

mod embedded;
mod kafka;

pub use embedded::{EmbeddedKafka, ReadBackLogger};
pub use kafka::{
    spool_ready_headroom, validate_properties, Durability, FlushReport, KafkaSink, KafkaStatus, Outgoing, SinkError,
    SinkSettings, DEFAULT_PRODUCER_PROPERTIES,
};
