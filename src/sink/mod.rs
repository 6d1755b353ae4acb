//! The Kafka sink: where accepted events leave the process, and the embedded cluster of `--dev`.

mod embedded;
mod kafka;

pub use embedded::{EmbeddedKafka, ReadBackLogger};
pub use kafka::{
    validate_properties, Durability, FlushReport, KafkaSink, KafkaStatus, Outgoing, SinkError, SinkSettings,
    DEFAULT_PRODUCER_PROPERTIES, SPOOL_READY_HEADROOM_BYTES,
};
