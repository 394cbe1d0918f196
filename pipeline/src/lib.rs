//! The Medallion pipeline model.
//!
//! A pipeline is declared in one YAML file ([`spec`]); [`Pipeline::load`] parses it, validates
//! every reference and builds the table [`Dag`]. Coordinator and executors share this crate so
//! both read a spec exactly the same way.

pub mod checks;
mod confine;
pub mod dag;
pub mod error;
mod pipeline;
pub mod plan;
pub mod regroup;
pub mod report;
pub mod retry;
pub mod schedule;
pub mod size;
pub mod spec;
pub mod sql;
mod template;
pub mod types;

pub use confine::{Confinement, SECRET_ENV_PREFIX};
pub use dag::{Dag, Layer, TableRef};
pub use error::{SpecError, SpecErrors};
pub use pipeline::{Pipeline, QUARANTINE_SUFFIX, RunDate};

/// Bronze metadata columns, added to every raw row.
pub mod meta {
    /// When the row was ingested (timestamp, UTC); the same for every row of one run.
    pub const INGESTED_AT: &str = "_ingested_at";
    /// The file the row came from.
    pub const SOURCE_FILE: &str = "_source_file";
    /// The size in bytes of the file when it was ingested.
    pub const SOURCE_FILE_SIZE: &str = "_source_file_size";
    /// The version of the file when it was ingested: an object's ETag, a local file's
    /// modification time. With the size, it tells a file changed in place.
    pub const SOURCE_FILE_VERSION: &str = "_source_file_version";
    /// The spec's source name.
    pub const SOURCE_NAME: &str = "_source_name";
    /// The ingestion date (UTC); bronze tables are partitioned by it.
    pub const INGESTION_DATE: &str = "_ingestion_date";
    /// What could not be parsed into the table's columns, as JSON; NULL for clean rows.
    pub const RESCUED_DATA: &str = "_rescued_data";
    /// A Kafka record's topic, partition, offset, timestamp (UTC) and key (bytes).
    pub const TOPIC: &str = "_topic";
    pub const PARTITION: &str = "_partition";
    pub const OFFSET: &str = "_offset";
    pub const TIMESTAMP: &str = "_timestamp";
    pub const KEY: &str = "_key";

    /// Whether a column is one Medallion adds to bronze rows (not source data).
    pub fn is_bronze_column(name: &str) -> bool {
        [
            INGESTED_AT,
            SOURCE_FILE,
            SOURCE_FILE_SIZE,
            SOURCE_FILE_VERSION,
            SOURCE_NAME,
            INGESTION_DATE,
            RESCUED_DATA,
        ]
        .contains(&name)
    }

    /// Whether a column is one a Kafka source's bronze rows have beside the bronze columns.
    pub fn is_kafka_column(name: &str) -> bool {
        [TOPIC, PARTITION, OFFSET, TIMESTAMP, KEY].contains(&name)
    }

    /// Bronze tables are partitioned by ingestion date.
    pub fn bronze_partition_columns() -> Vec<String> {
        vec![INGESTION_DATE.to_string()]
    }
}

#[cfg(test)]
mod tests;
