//! Bronze from a Kafka topic: every partition's records past the offsets the table's last
//! ingestion recorded, up to each partition's end when the run plans, in ranges of at most
//! `records_per_task` records read at the same time (one task each).
//!
//! The offsets reached go into the bronze commit's info ([`INFO_POSITION`]:
//! `{"topic": "orders", "offsets": {"0": 1200, "1": 1187}}`), in the same atomic commit as
//! the records, made on the version the previous offsets were read at: two runs reading the
//! same records conflict instead of both landing, and a run that dies before its commit
//! leaves the offsets where they were, so the next run reads those records again and nothing
//! twice. The broker keeps no offsets of ours.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use medallion_pipeline::spec::{KafkaSource, OnDataLoss, SchemaEvolution, SourceSpec};
use medallion_pipeline::{TableRef, meta};
use medallion_proto::{IngestWork, StreamRange};
use medallion_sources::kafka::{PartitionOffsets, Topic};

use super::{
    INFO_POSITION, RunContext, SourceChanges, StagePlan, last_position, positioned_commit,
};

/// Records per partition whose fields name a new table's columns (as the first records of a
/// JSON lines file do); fields seen only later are rescued until a run adds them.
const SAMPLE_RECORDS: usize = 1000;

impl RunContext<'_> {
    pub(super) async fn plan_stream(
        &self,
        table: &TableRef,
        source: &SourceSpec,
        kafka: &KafkaSource,
    ) -> Result<StagePlan> {
        let name = &source.name.value;
        let target = self.target(table, None);
        let existing = medallion_lake::open_table(&target.uri, &self.storage_options).await?;
        let rebuild = self.rebuild.contains(table);
        let read_to = match &existing {
            Some(t) if !rebuild => match last_position(t, table).await? {
                Some(position) => recorded_offsets(&position, &kafka.topic.value)
                    .ok_or_else(|| anyhow!("{table}: unreadable {INFO_POSITION}: {position}"))?,
                None => BTreeMap::new(),
            },
            _ => BTreeMap::new(),
        };
        let topic = Topic::connect(self.pipeline, kafka, name).await?;
        let offsets = topic.offsets().await?;
        let ranges = ranges(table, kafka, &offsets, &read_to)?;
        let reached: BTreeMap<String, i64> = offsets
            .iter()
            .map(|p| (p.partition.to_string(), p.end))
            .collect();
        let position = serde_json::json!({ "topic": kafka.topic.value, "offsets": reached });
        let (commit, refresh) =
            positioned_commit(existing.as_ref(), true, rebuild, Some(position), "");
        if ranges.is_empty() {
            return Ok(StagePlan::nothing_to_do(commit, target));
        }
        let mut data = match &existing {
            Some(t) => super::existing_data_columns(t)?
                .fields()
                .iter()
                .filter(|f| !meta::is_kafka_column(f.name()))
                .map(|f| f.as_ref().clone())
                .collect(),
            None => Vec::new(),
        };
        let mut columns_added = Vec::new();
        if existing.is_none() || source.schema_evolution() == SchemaEvolution::AddNewColumns {
            let mut sampled = std::collections::HashSet::new();
            for range in &ranges {
                if !sampled.insert(range.partition) {
                    continue;
                }
                let span = (range.from_offset, range.to_offset);
                for field in topic
                    .sample_fields(range.partition, span, SAMPLE_RECORDS)
                    .await?
                {
                    let new = !data.iter().any(|f: &Field| f.name() == &field);
                    if new && !meta::is_bronze_column(&field) && !meta::is_kafka_column(&field) {
                        data.push(Field::new(&field, DataType::Utf8, true));
                        columns_added.extend(existing.is_some().then_some(field));
                    }
                }
            }
        }
        let slices = ranges.into_iter().map(|range| IngestWork {
            stream: Some(range),
            ..Default::default()
        });
        let tasks = self.slice_tasks(&target, &Schema::new(data), slices)?;
        Ok(StagePlan {
            tasks,
            commit,
            target,
            engine: None,
            refresh,
            source_changes: SourceChanges {
                columns_added,
                ..Default::default()
            },
        })
    }
}

/// The next offset of each partition a position recorded for `topic`; none when it recorded
/// another topic (the source now names a new one, read from its start). `None` when the
/// position is not one a Kafka source records.
fn recorded_offsets(position: &serde_json::Value, topic: &str) -> Option<BTreeMap<i32, i64>> {
    let offsets = position.get("offsets")?.as_object()?;
    if position.get("topic")?.as_str()? != topic {
        return Some(BTreeMap::new());
    }
    offsets
        .iter()
        .map(|(p, o)| Some((p.parse().ok()?, o.as_i64()?)))
        .collect()
}

/// The ranges a run reads: each partition from the offset read up to (its oldest record for
/// a partition never read) to its end, split into ranges of at most `records_per_task`.
fn ranges(
    table: &TableRef,
    kafka: &KafkaSource,
    offsets: &[PartitionOffsets],
    read_to: &BTreeMap<i32, i64>,
) -> Result<Vec<StreamRange>> {
    let per_task = kafka.records_per_task().max(1) as i64;
    let mut ranges = Vec::new();
    for p in offsets {
        let mut from = read_to.get(&p.partition).copied().unwrap_or(p.earliest);
        if from > p.end {
            bail!(
                "{table}: partition {} of topic '{}' ends at offset {} but the table has read \
                 up to {from}: the topic was recreated or truncated; rebuild the table with \
                 `medallion rerun <run> --full-refresh {table}`",
                p.partition,
                kafka.topic.value,
                p.end
            );
        }
        if from < p.earliest {
            let lost = format!(
                "partition {} of topic '{}': records {from}..{} were deleted by retention \
                 before they were ingested",
                p.partition, kafka.topic.value, p.earliest
            );
            match kafka.on_data_loss {
                OnDataLoss::Fail => bail!(
                    "{table}: {lost} (on_data_loss: skip reads on from the oldest record left)"
                ),
                OnDataLoss::Skip => {
                    tracing::warn!(%table, "{lost}; reading on from {}", p.earliest)
                }
            }
            from = p.earliest;
        }
        while from < p.end {
            let to = p.end.min(from.saturating_add(per_task));
            ranges.push(StreamRange {
                partition: p.partition,
                from_offset: from,
                to_offset: to,
            });
            from = to;
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(yaml: &str) -> KafkaSource {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn at(partition: i32, earliest: i64, end: i64) -> PartitionOffsets {
        PartitionOffsets {
            partition,
            earliest,
            end,
        }
    }

    #[test]
    fn partitions_are_read_from_their_recorded_offsets_in_ranges() {
        let table = TableRef::new(medallion_pipeline::Layer::Bronze, "events");
        let k = kafka("{ brokers: ['k:9092'], topic: t, records_per_task: 100 }");
        let offsets = [at(0, 0, 250), at(1, 0, 40), at(2, 10, 10)];
        let read_to = BTreeMap::from([(0, 120), (1, 40)]);
        let got: Vec<_> = ranges(&table, &k, &offsets, &read_to)
            .unwrap()
            .into_iter()
            .map(|r| (r.partition, r.from_offset, r.to_offset))
            .collect();
        assert_eq!(got, [(0, 120, 220), (0, 220, 250)]);
        // A partition never read starts at its oldest record.
        let got = ranges(&table, &k, &[at(3, 5, 7)], &BTreeMap::new()).unwrap();
        assert_eq!((got[0].from_offset, got[0].to_offset), (5, 7));
    }

    #[test]
    fn records_lost_to_retention_fail_unless_skipped() {
        let table = TableRef::new(medallion_pipeline::Layer::Bronze, "events");
        let read_to = BTreeMap::from([(0, 5)]);
        let e = ranges(
            &table,
            &kafka("{ brokers: ['k:9092'], topic: t }"),
            &[at(0, 9, 20)],
            &read_to,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("partition 0 of topic 't': records 5..9 were deleted"),
            "{e}"
        );
        let skip = kafka("{ brokers: ['k:9092'], topic: t, on_data_loss: skip }");
        let got = ranges(&table, &skip, &[at(0, 9, 20)], &read_to).unwrap();
        assert_eq!((got[0].from_offset, got[0].to_offset), (9, 20));
        let e = ranges(&table, &skip, &[at(0, 0, 3)], &read_to)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ends at offset 3 but the table has read up to 5"),
            "{e}"
        );
    }

    #[test]
    fn offsets_are_read_back_only_for_the_same_topic() {
        let position = serde_json::json!({ "topic": "t", "offsets": { "0": 7, "2": 9 } });
        assert_eq!(
            recorded_offsets(&position, "t"),
            Some(BTreeMap::from([(0, 7), (2, 9)]))
        );
        assert_eq!(recorded_offsets(&position, "other"), Some(BTreeMap::new()));
        assert_eq!(
            recorded_offsets(&serde_json::json!({ "since": 3 }), "t"),
            None
        );
    }
}
