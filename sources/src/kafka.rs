//! Kafka-protocol topics: partitions' offsets, and ranges of records read into Arrow.
//!
//! Nothing is stored in the broker: no consumer group, no committed offsets. Which records a
//! table holds is recorded with its Delta commits, so the planner asks the broker only where
//! each partition begins and ends, and each task reads one range `[from, to)` of one
//! partition by offset.
//!
//! Values are JSON objects, parsed like JSON lines: fields to raw text columns, fields the
//! columns lack and values that are not JSON to `_rescued_data` (whose `_line` is then the
//! record's offset). A record without a value (a tombstone) is a row of NULLs.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{ArrayRef, BinaryArray, Int32Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use indexmap::IndexSet;
use medallion_pipeline::Pipeline;
use medallion_pipeline::meta;
use medallion_pipeline::spec::{KafkaSource, SaslMechanism};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::RecordAndOffset;
use serde::de::IgnoredAny;
use tokio::sync::mpsc;

use crate::text::{Rescued, TextBatch};
use crate::{BATCH_ROWS, Chunk, ReadOptions, with_rescued_column};

/// Bytes one fetch asks for (a larger record still comes whole).
const FETCH_BYTES: i32 = 8 * 1024 * 1024;
/// How long a fetch waits for records the broker does not have yet.
const FETCH_WAIT_MS: i32 = 500;
/// Offsets in a row a range may skip as transaction markers (see [`Fetcher::next`]).
const MAX_MARKERS: usize = 100;
/// How long a request is retried (broker down, leader moving) before the task fails, to be
/// retried as a whole.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("kafka source '{source_name}': {message}")]
pub struct KafkaError {
    pub source_name: String,
    pub message: String,
}

/// Where a partition's records begin and end when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The oldest record retention has left.
    pub earliest: i64,
    /// One past the newest record (the high watermark).
    pub end: i64,
}

/// What reading a range found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeRead {
    pub records: u64,
    pub rescued: u64,
    pub malformed: u64,
    pub bytes: u64,
}

/// A topic on its brokers, connected.
pub struct Topic {
    client: Client,
    name: String,
    source: String,
}

impl Topic {
    /// Connects to the source's brokers, with the SASL password read from the environment or
    /// a file (relative to the spec).
    pub async fn connect(
        pipeline: &Pipeline,
        kafka: &KafkaSource,
        source: &str,
    ) -> Result<Self, KafkaError> {
        let error = |message: String| KafkaError {
            source_name: source.to_string(),
            message,
        };
        let mut builder = ClientBuilder::new(kafka.brokers.value.clone())
            .client_id("medallion")
            .backoff_config(rskafka::BackoffConfig {
                deadline: Some(REQUEST_DEADLINE),
                ..Default::default()
            });
        if let Some(sasl) = &kafka.sasl {
            let sasl = &sasl.value;
            let password = crate::read_secret(
                pipeline,
                "sasl.password",
                sasl.password_env.as_ref().map(|v| v.value.as_str()),
                sasl.password_file.as_ref().map(|f| f.value.as_str()),
            )
            .map_err(error)?
            .unwrap_or_default();
            let credentials = Credentials::new(sasl.username.clone(), password);
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        let brokers = kafka.brokers.value.join(", ");
        let client = builder
            .build()
            .await
            .map_err(|e| error(format!("cannot connect to {brokers}: {e}")))?;
        Ok(Self {
            client,
            name: kafka.topic.value.clone(),
            source: source.to_string(),
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> KafkaError {
        KafkaError {
            source_name: self.source.clone(),
            message: format!("topic '{}': {message}", self.name),
        }
    }

    async fn partition(&self, partition: i32) -> Result<PartitionClient, KafkaError> {
        self.client
            .partition_client(self.name.as_str(), partition, UnknownTopicHandling::Error)
            .await
            .map_err(|e| self.error(format!("partition {partition}: {e}")))
    }

    /// Every partition of the topic with where its records begin and end now.
    pub async fn offsets(&self) -> Result<Vec<PartitionOffsets>, KafkaError> {
        let topics = self
            .client
            .list_topics()
            .await
            .map_err(|e| self.error(format!("cannot list topics: {e}")))?;
        let mut partitions = topics
            .into_iter()
            .find(|t| t.name == self.name)
            .ok_or_else(|| self.error("no such topic on the brokers"))?
            .partitions
            .into_iter()
            .collect::<Vec<_>>();
        partitions.sort_unstable();
        let mut offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let client = self.partition(partition).await?;
            let failed = |e| self.error(format!("partition {partition}: cannot list offsets: {e}"));
            let earliest = client
                .get_offset(OffsetAt::Earliest)
                .await
                .map_err(failed)?;
            let end = client.get_offset(OffsetAt::Latest).await.map_err(failed)?;
            offsets.push(PartitionOffsets {
                partition,
                earliest,
                end,
            });
        }
        Ok(offsets)
    }

    /// The records of `[from, to)` of `partition`, fetch by fetch.
    async fn fetcher(&self, partition: i32, from: i64, to: i64) -> Result<Fetcher<'_>, KafkaError> {
        Ok(Fetcher {
            topic: self,
            client: self.partition(partition).await?,
            offset: from,
            to,
        })
    }

    /// The field names of the values of up to `limit` records from `from`, in the order first
    /// seen: the columns a new table gets, as for JSON lines files.
    pub async fn sample_fields(
        &self,
        partition: i32,
        (from, to): (i64, i64),
        limit: usize,
    ) -> Result<Vec<String>, KafkaError> {
        type Object = indexmap::IndexMap<String, IgnoredAny>;
        let mut fields = IndexSet::new();
        let mut seen = 0;
        let mut fetcher = self.fetcher(partition, from, to).await?;
        while seen < limit {
            let Some(records) = fetcher.next().await? else {
                break;
            };
            for r in records.iter().take(limit - seen) {
                let value = r.record.value.as_deref().unwrap_or_default();
                if let Ok(object) = serde_json::from_slice::<Object>(value) {
                    fields.extend(object.into_keys());
                }
            }
            seen += records.len();
        }
        Ok(fields.into_iter().collect())
    }

    /// Reads `[from, to)` of `partition` into batches of [`record_schema`]`(data)`, sent to
    /// `tx` as they fill. Stops early, without an error, if the receiver goes away.
    pub async fn read(
        &self,
        partition: i32,
        (from, to): (i64, i64),
        data: &Schema,
        options: &ReadOptions,
        tx: &mpsc::Sender<RecordBatch>,
    ) -> Result<RangeRead, KafkaError> {
        let mut rows = Rows::new(&self.name, partition, data, options);
        let mut read = RangeRead::default();
        let mut fetcher = self.fetcher(partition, from, to).await?;
        let full = |rows: &mut Rows, read: &mut RangeRead| {
            let chunk = rows.finish().map_err(|e| self.error(e))?;
            read.records += chunk.batch.num_rows() as u64;
            read.rescued += chunk.rescued as u64;
            read.malformed += chunk.malformed as u64;
            Ok::<_, KafkaError>(chunk.batch)
        };
        while let Some(records) = fetcher.next().await? {
            for r in &records {
                read.bytes += r.record.approximate_size() as u64;
                rows.push(r);
                if rows.len() >= BATCH_ROWS && tx.send(full(&mut rows, &mut read)?).await.is_err() {
                    return Ok(read);
                }
            }
        }
        if rows.len() > 0 {
            // A receiver gone now has nothing left to miss.
            let _ = tx.send(full(&mut rows, &mut read)?).await;
        }
        Ok(read)
    }
}

/// Fetches a range of one partition by offset.
struct Fetcher<'a> {
    topic: &'a Topic,
    client: PartitionClient,
    offset: i64,
    to: i64,
}

impl Fetcher<'_> {
    /// The next records of the range, in offset order; `None` at its end.
    async fn next(&mut self) -> Result<Option<Vec<RecordAndOffset>>, KafkaError> {
        let partition = self.client.partition();
        let mut skipped = 0;
        while self.offset < self.to {
            let at = self.offset;
            let (mut records, end) = self
                .client
                .fetch_records(at, 1..FETCH_BYTES, FETCH_WAIT_MS)
                .await
                .map_err(|e| {
                    self.topic
                        .error(format!("partition {partition} at offset {at}: {e}"))
                })?;
            records.retain(|r| r.offset < self.to);
            if let Some(last) = records.last() {
                self.offset = last.offset + 1;
                return Ok(Some(records));
            }
            if end <= at {
                return Err(self.topic.error(format!(
                    "partition {partition} now ends at offset {end}, before the {} planned: \
                     the topic was truncated or recreated since the run planned",
                    self.to
                )));
            }
            // Nothing readable at `at` below the end: a transaction marker, one offset, which
            // the client does not return. Many in a row is a broker not answering as Kafka
            // does: fail rather than skip records unseen.
            skipped += 1;
            if skipped > MAX_MARKERS {
                return Err(self.topic.error(format!(
                    "partition {partition}: no records at offsets {}..={at} below its end \
                     {end}",
                    at - MAX_MARKERS as i64
                )));
            }
            self.offset = at + 1;
        }
        Ok(None)
    }
}

/// Records turned into rows: the values' fields as JSON lines are, the Kafka columns beside.
struct Rows {
    text: TextBatch,
    schema: SchemaRef,
    topic: String,
    partition: i32,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    keys: Vec<Option<Vec<u8>>>,
}

impl Rows {
    fn new(topic: &str, partition: i32, data: &Schema, options: &ReadOptions) -> Self {
        Self {
            text: TextBatch::new(with_rescued_column(data), options.ignore_new_fields),
            schema: record_schema(data),
            topic: topic.to_string(),
            partition,
            offsets: Vec::new(),
            timestamps: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn push(&mut self, r: &RecordAndOffset) {
        // `_line` in `_rescued_data` is the offset.
        let line = r.offset as u64;
        match r.record.value.as_deref().map(std::str::from_utf8) {
            Some(Ok(value)) => crate::json::push_object(&mut self.text, line, value),
            Some(Err(_)) => self.text.push_corrupt(line, "<value is not valid UTF-8>"),
            None => {
                let nulls = vec![None::<&str>; self.text.data_columns()];
                self.text.push(line, nulls, Rescued::new());
            }
        }
        self.offsets.push(r.offset);
        self.timestamps.push(r.record.timestamp.timestamp_micros());
        self.keys.push(r.record.key.clone());
    }

    /// The rows pushed so far as one batch (one row per record, in order).
    fn finish(&mut self) -> Result<Chunk, arrow::error::ArrowError> {
        let chunk = self.text.finish()?;
        let n = self.offsets.len();
        let mut columns: Vec<ArrayRef> = chunk.batch.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![self.topic.as_str(); n])));
        columns.push(Arc::new(Int32Array::from(vec![self.partition; n])));
        columns.push(Arc::new(Int64Array::from(std::mem::take(
            &mut self.offsets,
        ))));
        let timestamps = TimestampMicrosecondArray::from(std::mem::take(&mut self.timestamps));
        columns.push(Arc::new(timestamps.with_timezone("UTC")));
        let keys = std::mem::take(&mut self.keys);
        columns.push(Arc::new(
            keys.iter().map(|k| k.as_deref()).collect::<BinaryArray>(),
        ));
        Ok(Chunk {
            batch: RecordBatch::try_new(self.schema.clone(), columns)?,
            ..chunk
        })
    }
}

/// The columns of a Kafka source's records: the data columns, `_rescued_data`, then
/// `_topic`, `_partition`, `_offset`, `_timestamp` and `_key`.
pub fn record_schema(data: &Schema) -> SchemaRef {
    let read = with_rescued_column(data);
    let mut fields: Vec<Field> = read.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([
        Field::new(meta::TOPIC, DataType::Utf8, false),
        Field::new(meta::PARTITION, DataType::Int32, false),
        Field::new(meta::OFFSET, DataType::Int64, false),
        Field::new(
            meta::TIMESTAMP,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(meta::KEY, DataType::Binary, true),
    ]);
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type};
    use chrono::TimeZone;
    use rskafka::record::Record;

    use super::*;

    fn record(offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec),
                headers: Default::default(),
                timestamp: chrono::Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            },
            offset,
        }
    }

    #[test]
    fn records_become_one_row_each_with_their_kafka_columns() {
        let data = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("status", DataType::Utf8, true),
        ]);
        let options = ReadOptions {
            format: medallion_pipeline::spec::SourceFormat::Json,
            header: false,
            delimiter: b',',
            ignore_new_fields: false,
        };
        let mut rows = Rows::new("orders", 2, &data, &options);
        rows.push(&record(
            10,
            Some(b"k1"),
            Some(br#"{"id": 1, "status": "new", "extra": true}"#),
        ));
        rows.push(&record(11, None, Some(b"not json")));
        rows.push(&record(13, Some(b"k3"), None));
        rows.push(&record(14, Some(&[0xff]), Some(&[0xfe, 0x00])));
        let chunk = rows.finish().unwrap();
        let b = &chunk.batch;
        assert_eq!(b.num_rows(), 4);
        assert_eq!((chunk.rescued, chunk.malformed), (3, 2));
        let text = |name: &str, row: usize| {
            let c = b.column_by_name(name).unwrap().as_string::<i32>();
            c.is_valid(row).then(|| c.value(row).to_string())
        };
        assert_eq!(text("id", 0).as_deref(), Some("1"));
        assert_eq!(text("status", 2), None, "a tombstone is a row of NULLs");
        let rescued = |row| text(meta::RESCUED_DATA, row).unwrap_or_default();
        assert!(rescued(0).contains(r#""extra":true"#), "{}", rescued(0));
        assert!(
            rescued(1).contains(r#""_corrupt_record":"not json""#),
            "{}",
            rescued(1)
        );
        assert!(
            rescued(1).contains(r#""_line":11"#),
            "the offset: {}",
            rescued(1)
        );
        assert!(rescued(3).contains("not valid UTF-8"), "{}", rescued(3));
        assert_eq!(text(meta::TOPIC, 3).as_deref(), Some("orders"));
        let partitions = b.column_by_name(meta::PARTITION).unwrap();
        assert!(
            partitions
                .as_primitive::<Int32Type>()
                .iter()
                .all(|p| p == Some(2))
        );
        let offsets = b
            .column_by_name(meta::OFFSET)
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(offsets.values().to_vec(), [10, 11, 13, 14]);
        let keys = b.column_by_name(meta::KEY).unwrap().as_binary::<i32>();
        assert_eq!(
            (keys.value(0), keys.is_null(1), keys.value(3)),
            (&b"k1"[..], true, &[0xff][..])
        );
        let times = b.column_by_name(meta::TIMESTAMP).unwrap();
        let times = times.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(times.value(0), 1_700_000_000_123_000);
        assert_eq!(b.schema(), record_schema(&data));
        // The builder starts again empty.
        rows.push(&record(15, None, Some(b"{}")));
        assert_eq!(rows.finish().unwrap().batch.num_rows(), 1);
    }
}
