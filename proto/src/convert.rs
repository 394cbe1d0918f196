//! The one place domain types become wire types and back: the spec, table references, staged
//! files, task counters, run events, reports and plans. Everything else passes domain types around.

use medallion_pipeline::plan::RunPlan;
use medallion_pipeline::report::{Metrics, RunEvent, RunReport, TableReport};
use std::collections::BTreeMap;

use arrow_schema::SchemaRef;
use medallion_lake::TableFiles;
use medallion_pipeline::regroup::{GroupKey, Regroup};
use medallion_pipeline::{Pipeline, RunDate, SpecErrors, TableRef};

use crate::run_event::Event;
use crate::{AggregateWork, IngestWork, RunInfo, SpecText, StagedFiles, Task, TaskMetrics};

impl From<&Pipeline> for SpecText {
    fn from(pipeline: &Pipeline) -> Self {
        Self {
            yaml: pipeline.yaml.clone(),
            origin: pipeline.origin.clone(),
            base_dir: pipeline.base_dir.display().to_string(),
            name: pipeline.name().to_string(),
            interval_start_micros: pipeline.interval.start.timestamp_micros(),
            interval_end_micros: pipeline.interval.end.timestamp_micros(),
        }
    }
}

impl SpecText {
    /// Parses and validates the spec, as the process that sent it did.
    pub fn parse(&self) -> Result<Pipeline, SpecErrors> {
        Pipeline::parse_for(
            self.yaml.clone(),
            self.origin.clone(),
            self.base_dir.clone().into(),
            self.run_date(),
        )
    }

    /// The interval the sender rendered the spec for, if it chose one.
    pub fn run_date(&self) -> RunDate {
        let micros = chrono::DateTime::from_timestamp_micros;
        match (
            micros(self.interval_start_micros),
            micros(self.interval_end_micros),
        ) {
            (Some(start), Some(end)) if end > start => RunDate::Interval { start, end },
            _ => RunDate::Latest,
        }
    }
}

impl Task {
    /// The table the task writes.
    pub fn table_ref(&self) -> Result<TableRef, String> {
        self.table.parse()
    }
}

impl IngestWork {
    /// The data columns every task of the stage reads into.
    pub fn data_schema(&self) -> anyhow::Result<SchemaRef> {
        medallion_lake::schema_from_json(&self.data_schema_json)
    }
}

impl AggregateWork {
    /// Work that reads `inputs` at their versions, on the Ballista scheduler at `ballista`
    /// (`df://host:port`) when one is given.
    pub fn new(
        inputs: &BTreeMap<TableRef, u64>,
        ballista: Option<String>,
        regroup: Option<&Regroup>,
    ) -> Self {
        Self {
            input_versions: inputs.iter().map(|(t, v)| (t.to_string(), *v)).collect(),
            ballista_scheduler: ballista.unwrap_or_default(),
            regroup: regroup.map(|r| crate::Regroup {
                input: r.input.to_string(),
                after_version: r.after_version,
                input_column: r.key.input_column.clone(),
                output_column: r.key.output_column.clone(),
                table_version: r.table_version,
            }),
        }
    }

    /// The groups to recompute, for an incremental refresh.
    pub fn regroup(&self) -> Result<Option<Regroup>, String> {
        self.regroup
            .as_ref()
            .map(|r| {
                Ok(Regroup {
                    input: r.input.parse()?,
                    after_version: r.after_version,
                    key: GroupKey {
                        input_column: r.input_column.clone(),
                        output_column: r.output_column.clone(),
                    },
                    table_version: r.table_version,
                })
            })
            .transpose()
    }

    /// The tables the query reads, at their pinned versions.
    pub fn inputs(&self) -> Result<Vec<(TableRef, u64)>, String> {
        self.input_versions
            .iter()
            .map(|(t, v)| Ok((t.parse()?, *v)))
            .collect()
    }
}

impl TryFrom<&TableFiles> for StagedFiles {
    type Error = anyhow::Error;

    fn try_from(files: &TableFiles) -> anyhow::Result<Self> {
        Ok(Self {
            add_actions_json: files
                .adds
                .iter()
                .map(serde_json::to_string)
                .collect::<Result<_, _>>()?,
            schema_json: medallion_lake::schema_to_json(&files.schema)?,
        })
    }
}

impl TryFrom<&StagedFiles> for TableFiles {
    type Error = anyhow::Error;

    fn try_from(files: &StagedFiles) -> anyhow::Result<Self> {
        Ok(Self {
            adds: files
                .add_actions_json
                .iter()
                .map(|a| serde_json::from_str(a))
                .collect::<Result<_, _>>()?,
            schema: medallion_lake::schema_from_json(&files.schema_json)?,
        })
    }
}

impl From<&TaskMetrics> for Metrics {
    fn from(m: &TaskMetrics) -> Self {
        Self {
            files_read: m.files_read,
            rows_read: m.rows_read,
            rows_written: m.rows_written,
            rows_rescued: m.rows_rescued,
            rows_malformed: m.rows_malformed,
            rows_filtered: m.rows_filtered,
            rows_deduplicated: m.rows_deduplicated,
            bytes_written: m.bytes_written,
            write_ms: m.write_ms,
            run_ms: m.run_ms,
            bytes_read: m.bytes_read,
            rows_dropped: m.rows_dropped,
            rows_quarantined: m.rows_quarantined,
            ..Default::default()
        }
    }
}

/// A table report as it travels in events and run infos: JSON, the same as
/// `medallion run --output json` prints.
fn report_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

impl From<&RunEvent> for crate::RunEvent {
    fn from(event: &RunEvent) -> Self {
        let event = match event {
            RunEvent::TablePlanned { table, tasks } => Event::TablePlanned(crate::TablePlanned {
                table: table.to_string(),
                tasks: *tasks as u32,
            }),
            RunEvent::TaskFinished { table, task_id, ok } => {
                Event::TaskFinished(crate::TaskFinished {
                    table: table.to_string(),
                    task_id: task_id.clone(),
                    ok: *ok,
                })
            }
            RunEvent::TaskRetried {
                table,
                task_id,
                error,
            } => Event::TaskRetried(crate::TaskRetried {
                table: table.to_string(),
                task_id: task_id.clone(),
                error: error.clone(),
            }),
            RunEvent::TableFinished { report } => Event::TableFinishedJson(report_json(report)),
        };
        Self { event: Some(event) }
    }
}

impl From<RunInfo> for crate::RunEvent {
    /// The run's last event.
    fn from(info: RunInfo) -> Self {
        Self {
            event: Some(Event::RunEnded(info)),
        }
    }
}

/// A run event as a watcher receives it.
#[derive(Debug)]
pub enum Watched {
    Progress(RunEvent),
    /// The run ended as this.
    Ended(RunInfo),
}

impl TryFrom<crate::RunEvent> for Watched {
    type Error = String;

    fn try_from(event: crate::RunEvent) -> Result<Self, String> {
        let progress = match event.event.ok_or("an empty run event")? {
            Event::TablePlanned(e) => RunEvent::TablePlanned {
                table: e.table.parse()?,
                tasks: e.tasks as usize,
            },
            Event::TaskFinished(e) => RunEvent::TaskFinished {
                table: e.table.parse()?,
                task_id: e.task_id,
                ok: e.ok,
            },
            Event::TaskRetried(e) => RunEvent::TaskRetried {
                table: e.table.parse()?,
                task_id: e.task_id,
                error: e.error,
            },
            Event::TableFinishedJson(json) => RunEvent::TableFinished {
                report: serde_json::from_str(&json)
                    .map_err(|e| format!("unreadable table report: {e}"))?,
            },
            Event::RunEnded(info) => return Ok(Watched::Ended(info)),
        };
        Ok(Watched::Progress(progress))
    }
}

impl crate::TaskRecord {
    /// What a task's event leaves in the run state store; `None` for other events.
    pub fn of(event: &RunEvent) -> Option<Self> {
        use crate::TaskState;
        let (table, task_id, state, error) = match event {
            RunEvent::TaskFinished { table, task_id, ok } => {
                let state = if *ok {
                    TaskState::Succeeded
                } else {
                    TaskState::Failed
                };
                (table, task_id, state, String::new())
            }
            RunEvent::TaskRetried {
                table,
                task_id,
                error,
            } => (table, task_id, TaskState::Retrying, error.clone()),
            _ => return None,
        };
        Some(Self {
            task_id: task_id.clone(),
            table: table.to_string(),
            state: state as i32,
            error,
        })
    }
}

impl crate::PlanResponse {
    pub fn new(plan: &RunPlan) -> Self {
        Self {
            plan_json: report_json(plan),
        }
    }

    /// The plan it carries.
    pub fn plan(&self) -> Result<RunPlan, String> {
        serde_json::from_str(&self.plan_json).map_err(|e| format!("an unreadable plan: {e}"))
    }
}

impl RunInfo {
    /// The full report of an ended run.
    pub fn report(&self) -> Option<RunReport> {
        serde_json::from_str(&self.report_json).ok()
    }

    /// Sets the report of the run as it ended.
    pub fn set_report(&mut self, report: &RunReport) {
        self.report_json = report_json(report);
    }

    /// The tables finished so far (all of them once the run ended), from either report.
    pub fn tables(&self) -> Vec<TableReport> {
        #[derive(serde::Deserialize)]
        struct Tables {
            #[serde(default)]
            tables: Vec<TableReport>,
        }
        serde_json::from_str::<Tables>(&self.report_json).map_or_else(|_| Vec::new(), |t| t.tables)
    }

    /// Sets the report of a run that has not ended (or was cancelled): the tables finished.
    pub fn set_tables(&mut self, tables: &[TableReport]) {
        self.report_json = serde_json::json!({ "tables": tables }).to_string();
    }
}

#[cfg(test)]
mod tests {
    use medallion_pipeline::report::TableStatus;
    use medallion_pipeline::{Layer, TableRef};

    use super::*;

    fn round_trip(event: RunEvent) -> RunEvent {
        let wire = crate::RunEvent::from(&event);
        let bytes = prost::Message::encode_to_vec(&wire);
        let decoded: crate::RunEvent = prost::Message::decode(bytes.as_slice()).unwrap();
        match Watched::try_from(decoded).unwrap() {
            Watched::Progress(e) => e,
            Watched::Ended(_) => panic!("not an end"),
        }
    }

    #[test]
    fn run_events_survive_the_wire() {
        let table = TableRef::new(Layer::Silver, "orders");
        let e = round_trip(RunEvent::TaskRetried {
            table: table.clone(),
            task_id: "silver.orders#1".into(),
            error: "disk full".into(),
        });
        assert!(
            matches!(e, RunEvent::TaskRetried { table: t, task_id, error } if t == table && task_id == "silver.orders#1" && error == "disk full")
        );
        let mut report = TableReport::new(&table, TableStatus::Committed { version: 4 });
        report.metrics.rows_written = 12;
        match round_trip(RunEvent::TableFinished {
            report: Box::new(report),
        }) {
            RunEvent::TableFinished { report } => {
                assert_eq!(report.table, "silver.orders");
                assert!(matches!(
                    report.status,
                    TableStatus::Committed { version: 4 }
                ));
                assert_eq!(report.metrics.rows_written, 12);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_table_name_on_the_wire_is_an_error() {
        let wire = crate::RunEvent {
            event: Some(Event::TablePlanned(crate::TablePlanned {
                table: "platinum.x".into(),
                tasks: 1,
            })),
        };
        assert!(Watched::try_from(wire).is_err());
    }

    #[test]
    fn the_spec_travels_as_text_and_parses_back_the_same() {
        let yaml = "pipeline: p\nlake: lake\nsources:\n  - { name: s, format: json, path: in/*.jsonl }\nbronze:\n  - { name: b, source: s }\n";
        let pipeline = Pipeline::parse(yaml.into(), "p.yaml".into(), "/work".into()).unwrap();
        let text = SpecText::from(&pipeline);
        assert_eq!(text.name, "p");
        let back = text.parse().unwrap();
        assert_eq!(
            (back.yaml, back.lake_root, back.base_dir, back.interval),
            (
                pipeline.yaml,
                pipeline.lake_root,
                pipeline.base_dir,
                pipeline.interval
            )
        );
    }

    #[test]
    fn staged_files_survive_the_wire_with_null_partitions_and_nested_types() {
        use arrow_schema::{DataType, Field, Schema, TimeUnit};
        let add = serde_json::json!({
            "path": "day=__HIVE_DEFAULT_PARTITION__/part-0.parquet",
            "partitionValues": {"day": null},
            "size": 10, "modificationTime": 1, "dataChange": true,
            "stats": "{\"numRecords\":3}"
        });
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new(
                "address",
                DataType::Struct(vec![Field::new("city", DataType::Utf8, true)].into()),
                true,
            ),
            Field::new("day", DataType::Utf8, true),
        ]);
        let files = TableFiles {
            adds: vec![serde_json::from_value(add.clone()).unwrap()],
            schema: std::sync::Arc::new(schema),
        };
        let wire = StagedFiles::try_from(&files).unwrap();
        let bytes = prost::Message::encode_to_vec(&wire);
        let decoded: StagedFiles = prost::Message::decode(bytes.as_slice()).unwrap();
        let back = TableFiles::try_from(&decoded).unwrap();
        assert_eq!(back.schema, files.schema);
        let back_add = serde_json::to_value(&back.adds[0]).unwrap();
        assert_eq!(
            (
                &back_add["path"],
                &back_add["partitionValues"],
                &back_add["stats"]
            ),
            (&add["path"], &add["partitionValues"], &add["stats"])
        );
    }

    #[test]
    fn a_staged_file_that_is_not_an_add_action_is_an_error() {
        let wire = StagedFiles {
            add_actions_json: vec!["{\"remove\": {}}".into()],
            schema_json: String::new(),
        };
        assert!(TableFiles::try_from(&wire).is_err());
    }
}
