//! Planning: how one table of a run is split into tasks, and how its output is committed.
//!
//! - bronze: the source files not ingested before, in groups of `files_per_task`;
//! - silver: `partitions` key-hash partitions of one pinned version of the input;
//! - gold: one task over pinned versions of the tables its SQL reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::prelude::SessionContext;
use futures::{StreamExt, TryStreamExt};
use medallion_lake::changes::Changes;
use medallion_lake::objects;
use medallion_pipeline::report::{ChangedFiles, Engine, Refresh};
use medallion_pipeline::spec::{
    GoldEngine, OnChange, SchemaEvolution, SilverSpec, SourceFormat, SourceKind, SourceSpec,
    WriteMode,
};
use medallion_pipeline::{Layer, Pipeline, TableRef, meta};
use medallion_proto::{AggregateWork, IngestWork, Task, TransformWork, task::Work};
use medallion_sources::ReadOptions;

use crate::listing::{self, SourceFile, list_source_files};

/// Records per file read to decide the columns of a source without a declared schema.
const INFERENCE_SAMPLE_ROWS: usize = 1000;

/// The most of a line-based object fetched to infer its columns: its first lines, where its
/// first records are (1,000 records of up to 16 KiB each).
const INFERENCE_SAMPLE_BYTES: u64 = 16 << 20;

/// How many of a quarantine table's latest commits are searched for the one that goes with
/// its table's latest commit (normally the latest; more when runs overlapped).
const QUARANTINE_LOOKBACK: usize = 10;

/// How the files of a table's tasks become a Delta version.
///
/// `inputs` are the versions of the tables the tasks read, recorded with the commit so that a
/// table whose inputs and spec did not change is not computed again.
#[derive(Debug, Clone)]
pub enum CommitPlan {
    /// Add the files (bronze); `files` are the source files they came from.
    ///
    /// `ledger_version` is the version whose rows said which files were already ingested
    /// (`None`: the table did not exist). The commit is made on that version, so a concurrent
    /// ingest of the same files conflicts instead of doubling rows. `reingest`: files among
    /// `files` ingested before and changed since (`on_change: reingest`), whose earlier rows
    /// the commit replaces. `position`: how far a source that is not files was read (see
    /// [`INFO_POSITION`]).
    Append {
        files: Vec<String>,
        ledger_version: Option<u64>,
        reingest: Vec<String>,
        position: Option<serde_json::Value>,
    },
    /// Replace every row of a bronze table with the files, recording how far its source was
    /// read, if it records that: a rebuild, or a database source without a cursor.
    Replace { position: Option<serde_json::Value> },
    /// Replace every row of the table with the files (or create the table with them).
    Overwrite { inputs: Inputs },
    /// Add the files' rows to the table: an incremental refresh of a table without keys.
    Insert { inputs: Inputs },
    /// Upsert the staged files into the table on `keys`.
    ///
    /// `latest` is the column a row must not be older by to replace the table's row with its
    /// key (an incremental refresh of a table with `latest_by`); `None`: staged rows replace.
    /// `incremental`: the staged rows are only the new ones (see [`Refresh`]). `replace`: the
    /// staged rows are the whole new state of the keys they name (an incremental refresh of a
    /// CDC table, whose keys may have several rows or none; see [`medallion_pipeline::spec::TOUCHED_KEY`]).
    Merge {
        keys: Vec<String>,
        inputs: Inputs,
        latest: Option<String>,
        incremental: bool,
        replace: bool,
    },
}

impl CommitPlan {
    /// Whether the staged rows are only the input's new rows, so the rows they quarantine are
    /// added to the quarantine table; otherwise they replace it, as every row was screened.
    pub fn is_incremental(&self) -> bool {
        matches!(
            self,
            CommitPlan::Insert { .. }
                | CommitPlan::Merge {
                    incremental: true,
                    ..
                }
        )
    }

    /// Whether the commit merges rows into the table rather than adding or replacing files:
    /// an upsert, or bronze files ingested again.
    pub fn merges(&self) -> bool {
        match self {
            CommitPlan::Merge { .. } => true,
            CommitPlan::Append { reingest, .. } => !reingest.is_empty(),
            CommitPlan::Overwrite { .. }
            | CommitPlan::Insert { .. }
            | CommitPlan::Replace { .. } => false,
        }
    }

    /// The input versions it records, for all but bronze.
    pub fn inputs(&self) -> Option<&Inputs> {
        match self {
            CommitPlan::Append { .. } | CommitPlan::Replace { .. } => None,
            CommitPlan::Overwrite { inputs }
            | CommitPlan::Insert { inputs }
            | CommitPlan::Merge { inputs, .. } => Some(inputs),
        }
    }
}

/// The versions of the tables a table's tasks read.
pub type Inputs = BTreeMap<TableRef, u64>;

/// Inputs as a commit records them: `{"layer.name": version}`.
pub fn inputs_info(inputs: &Inputs) -> serde_json::Value {
    inputs
        .iter()
        .map(|(table, version)| (table.to_string(), (*version).into()))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Where a table's output goes: decided here, used as is by the tasks and the commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub table: TableRef,
    /// The Delta table's location.
    pub uri: String,
    /// Where the tasks write their files: the table's location, or a staging directory of
    /// the run's own when the commit merges them into the table.
    pub staged_uri: String,
    pub partition_columns: Vec<String>,
    /// `<table>__quarantine`, when a check of the table quarantines rows.
    pub quarantine: Option<Box<Target>>,
    /// The table records its changes in Delta's change data feed.
    pub change_data_feed: bool,
}

impl Target {
    /// Whether the tasks write into a staging directory rather than the table.
    pub fn is_staged_apart(&self) -> bool {
        self.staged_uri != self.uri
    }
}

/// A table's work in one run.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub tasks: Vec<Task>,
    pub commit: CommitPlan,
    pub target: Target,
    /// Where a gold query runs.
    pub engine: Option<Engine>,
    /// Whether a silver table reads only new input rows.
    pub refresh: Option<Refresh>,
    /// How a bronze table's source differs from what the table holds.
    pub source_changes: SourceChanges,
}

/// What a bronze plan found changed in its source since the table was last written.
#[derive(Debug, Clone, Default)]
pub struct SourceChanges {
    /// Columns the table gains in this commit, from fields new in its files.
    pub columns_added: Vec<String>,
    /// Columns whose type widens in this commit (`name: from -> to`).
    pub columns_widened: Vec<String>,
    /// Files the table ingested before that changed in place since.
    pub files_changed: Option<ChangedFiles>,
}

/// The columns new files of an existing bronze table are read into.
struct Evolution {
    columns: Schema,
    /// Columns new in the files.
    added: Vec<String>,
    /// Columns whose type widens (`name: from -> to`).
    widened: Vec<String>,
}

/// Widens each of `columns` that `wanted` gives a type holding every value of its own.
fn widen(columns: &mut [Field], wanted: &Schema, widened: &mut Vec<String>) {
    for column in columns.iter_mut() {
        let Ok(to) = wanted.field_with_name(column.name()) else {
            continue;
        };
        if medallion_lake::widens(column.data_type(), to.data_type()) {
            widened.push(format!(
                "{}: {} -> {}",
                column.name(),
                column.data_type(),
                to.data_type()
            ));
            *column = column.clone().with_data_type(to.data_type().clone());
        }
    }
}

impl StagePlan {
    fn nothing_to_do(commit: CommitPlan, target: Target) -> Self {
        Self {
            tasks: Vec::new(),
            commit,
            target,
            engine: None,
            refresh: None,
            source_changes: SourceChanges::default(),
        }
    }
}

/// What a table's latest commit records about how it was computed.
struct LastComputed {
    info: HashMap<String, serde_json::Value>,
    /// Its quarantined rows landed too, or it quarantined none.
    complete: bool,
}

impl LastComputed {
    fn same_spec(&self, pipeline: &Pipeline) -> bool {
        self.info.get(INFO_SPEC) == Some(&serde_json::json!(spec_fingerprint(pipeline)))
    }

    /// The version of `input` it was computed from.
    fn input_version(&self, input: &TableRef) -> Option<u64> {
        self.info.get(INFO_INPUTS)?.get(input.to_string())?.as_u64()
    }

    /// The inputs it was computed from, if it records them.
    fn inputs(&self) -> Option<Inputs> {
        self.info
            .get(INFO_INPUTS)?
            .as_object()?
            .iter()
            .map(|(t, v)| Some((t.parse().ok()?, v.as_u64()?)))
            .collect()
    }
}

/// A Ballista cluster gold queries may run on, and when they should.
#[derive(Clone)]
pub struct BallistaTarget {
    /// The scheduler's `host:port`, as executors and queries reach it.
    pub scheduler: String,
    /// `auto` gold tables run on Ballista from this many bytes of input.
    pub min_input_bytes: u64,
    /// How many executors are up now (`auto` needs two).
    pub executors: std::sync::Arc<dyn Fn() -> usize + Send + Sync>,
}

/// `commitInfo` key: the versions of the tables a commit was computed from.
pub const INFO_INPUTS: &str = "medallion.inputs";
/// `commitInfo` key: how far a bronze commit read a source that is not files (a database's
/// cursor), so the next run reads on from there: `{"cursor": {"type": "int", "value": 7}}`.
pub const INFO_POSITION: &str = "medallion.source_position";
/// `commitInfo` key: the fingerprint of the spec a commit was computed with.
pub const INFO_SPEC: &str = "medallion.spec_fingerprint";
/// `commitInfo` key: a commit's own id, to tell after an error whether it landed, and which
/// quarantine commit goes with it.
pub const INFO_COMMIT_ID: &str = "medallion.commit_id";
/// `commitInfo` key: the commit took rows out into its quarantine table.
pub const INFO_QUARANTINED: &str = "medallion.quarantined";

/// What the planner knows about the run as a whole.
pub struct RunContext<'a> {
    pub run_id: &'a str,
    pub pipeline: &'a Pipeline,
    pub storage_options: HashMap<String, String>,
    pub ingested_at_micros: i64,
    /// Set in a cluster with a Ballista scheduler.
    pub ballista: Option<&'a BallistaTarget>,
    /// Silver and gold tables read every input row, even where only changes would do.
    pub full_refresh: bool,
    /// Tables computed again from scratch and overwritten: bronze re-ingests every file its
    /// source names, silver and gold read every input row (`medallion rerun --full-refresh`).
    pub rebuild: &'a BTreeSet<TableRef>,
    /// Tables a run would commit before the one planned, when only planning (`medallion
    /// plan`): a table reading one is not up to date. Empty in a run, which plans a table
    /// once its inputs are committed.
    pub pending: &'a BTreeSet<TableRef>,
}

/// A fingerprint of the pipeline spec: any change to how tables are computed recomputes
/// every silver and gold table in full; a move of the lake or the sources does not
/// ([`Pipeline::computation`]).
pub fn spec_fingerprint(pipeline: &Pipeline) -> String {
    format!(
        "{:016x}",
        twox_hash::XxHash64::oneshot(0, pipeline.computation().as_bytes())
    )
}

impl RunContext<'_> {
    /// The target of `table` when its tasks write into `staged_uri` (`None`: the table).
    fn target(&self, table: &TableRef, staged_uri: Option<String>) -> Target {
        let uri = self.pipeline.table_uri(table);
        let quarantine = self.pipeline.quarantine_table(table).map(|q| {
            let uri = self.pipeline.table_uri(&q);
            Box::new(Target {
                table: q,
                staged_uri: uri.clone(),
                uri,
                partition_columns: Vec::new(),
                quarantine: None,
                change_data_feed: false,
            })
        });
        let partition_columns = match table.layer {
            Layer::Bronze => meta::bronze_partition_columns(),
            _ => Vec::new(),
        };
        Target {
            table: table.clone(),
            staged_uri: staged_uri.unwrap_or_else(|| uri.clone()),
            uri,
            partition_columns,
            quarantine,
            change_data_feed: self.pipeline.change_data_feed(table),
        }
    }

    fn task(&self, target: &Target, n: usize, work: Work) -> Task {
        Task {
            run_id: self.run_id.to_string(),
            task_id: format!("{}#{n}", target.table),
            attempt: 1,
            pipeline: Some(self.pipeline.into()),
            table: target.table.to_string(),
            output_uri: target.staged_uri.clone(),
            quarantine_uri: target
                .quarantine
                .as_ref()
                .map(|q| q.staged_uri.clone())
                .unwrap_or_default(),
            partition_columns: target.partition_columns.clone(),
            // Set for each dispatch by `dispatch::run_with_retries`.
            dispatch_dir: String::new(),
            work: Some(work),
        }
    }

    /// One bronze task per slice of a source that is not files (`slices` name only what each
    /// reads), all reading into `data`'s columns.
    fn slice_tasks(
        &self,
        target: &Target,
        data: &Schema,
        slices: impl IntoIterator<Item = IngestWork>,
    ) -> Result<Vec<Task>> {
        let data_schema_json = medallion_lake::schema_to_json(data)?;
        let tasks = slices.into_iter().enumerate().map(|(n, slice)| {
            let work = IngestWork {
                ingested_at_micros: self.ingested_at_micros,
                data_schema_json: data_schema_json.clone(),
                ..slice
            };
            self.task(target, n, Work::Ingest(work))
        });
        Ok(tasks.collect())
    }

    /// Plans `table`; an empty task list means there is nothing to do.
    pub async fn plan(&self, table: &TableRef) -> Result<StagePlan> {
        match table.layer {
            Layer::Bronze => self.plan_bronze(table).await,
            Layer::Silver => self.plan_silver(table).await,
            Layer::Gold => self.plan_gold(table).await,
        }
    }

    async fn plan_bronze(&self, table: &TableRef) -> Result<StagePlan> {
        let spec = self
            .pipeline
            .bronze(&table.name)
            .context("no such bronze table")?;
        let source = self
            .pipeline
            .source(&spec.source.value)
            .context("no such source")?;
        match source.kind() {
            SourceKind::Postgres(pg) => return self.plan_database(table, source, pg).await,
            SourceKind::Http(api) => return self.plan_api(table, api).await,
            SourceKind::Kafka(kafka) => return self.plan_stream(table, source, kafka).await,
            SourceKind::Files(_) => {}
        }
        let listed = list_source_files(self.pipeline, source).await?;
        let target = self.target(table, None);
        if self.rebuild.contains(table) {
            return self
                .rebuild_bronze(table, source, listed.files, target)
                .await;
        }
        let existing = medallion_lake::open_table(&target.uri, &self.storage_options).await?;
        let ingested = match &existing {
            Some(t) => ingested_files(t, Path::new(&listed.root)).await?,
            None => HashMap::new(),
        };
        let ledger_version = existing.as_ref().and_then(|t| t.version());
        let (mut new_files, changed) = compare_with_ledger(listed.files, &ingested);
        let files_changed = self.on_change(table, source, &changed)?;
        let reingest: Vec<String> = match source.on_change {
            OnChange::Reingest => changed.iter().map(|f| f.id.clone()).collect(),
            OnChange::Skip | OnChange::Fail => Vec::new(),
        };
        if source.on_change == OnChange::Reingest {
            new_files.extend(changed);
            new_files.sort_by(|a, b| a.id.cmp(&b.id));
        }
        if new_files.is_empty() {
            let commit = CommitPlan::Append {
                files: Vec::new(),
                ledger_version,
                reingest,
                position: None,
            };
            let mut plan = StagePlan::nothing_to_do(commit, target);
            plan.source_changes.files_changed = files_changed;
            return Ok(plan);
        }
        let evolution = match &existing {
            Some(t) => self.evolved_columns(source, t, &new_files).await?,
            None => Evolution {
                columns: self.source_columns(source, &new_files).await?,
                added: Vec::new(),
                widened: Vec::new(),
            },
        };
        let data = evolution.columns;
        let tasks = self.ingest_tasks(&target, spec.files_per_task, &new_files, &data)?;
        Ok(StagePlan {
            tasks,
            commit: CommitPlan::Append {
                files: new_files.into_iter().map(|f| f.id).collect(),
                ledger_version,
                reingest,
                position: None,
            },
            target,
            engine: None,
            refresh: None,
            source_changes: SourceChanges {
                columns_added: evolution.added,
                columns_widened: evolution.widened,
                files_changed,
            },
        })
    }

    /// Reports files changed since they were ingested, or refuses them (`on_change: fail`).
    fn on_change(
        &self,
        table: &TableRef,
        source: &SourceSpec,
        changed: &[SourceFile],
    ) -> Result<Option<ChangedFiles>> {
        if changed.is_empty() {
            return Ok(None);
        }
        let files: Vec<String> = changed.iter().map(|f| f.id.clone()).collect();
        let name = &source.name.value;
        if source.on_change == OnChange::Fail {
            bail!(
                "source '{name}': {} file(s) changed since {table} ingested them: {} \
                 (on_change: fail; set on_change to skip or reingest, or restore the files)",
                files.len(),
                files.join(", ")
            );
        }
        tracing::warn!(
            %table, source = %name, files = %files.join(", "), action = ?source.on_change,
            "source files changed since they were ingested"
        );
        Ok(Some(ChangedFiles {
            files,
            action: source.on_change,
        }))
    }

    /// Bronze tasks of `files_per_task` files each (more, beyond [`MAX_STAGE_TASKS`] tasks),
    /// reading into the `data` columns.
    fn ingest_tasks(
        &self,
        target: &Target,
        files_per_task: usize,
        files: &[SourceFile],
        data: &Schema,
    ) -> Result<Vec<Task>> {
        let data_schema_json = medallion_lake::schema_to_json(data)?;
        let tasks = files
            .chunks(files_per_ingest_task(files_per_task, files.len()))
            .enumerate()
            .map(|(n, files)| {
                let work = Work::Ingest(IngestWork {
                    files: files
                        .iter()
                        .map(|f| medallion_proto::SourceFile {
                            path: f.location.clone(),
                            id: f.id.clone(),
                            size: f.size as i64,
                            version: f.version.clone(),
                            real_path: f.real.clone().unwrap_or_default(),
                        })
                        .collect(),
                    ingested_at_micros: self.ingested_at_micros,
                    data_schema_json: data_schema_json.clone(),
                    database: None,
                    api: None,
                    stream: None,
                });
                self.task(target, n, work)
            })
            .collect();
        Ok(tasks)
    }

    /// A bronze table ingested again from every file its source names, replacing its rows
    /// in one commit (columns inferred afresh). A templated source path names one interval's
    /// files only, so rebuilding it would drop the others: refused.
    async fn rebuild_bronze(
        &self,
        table: &TableRef,
        source: &SourceSpec,
        files: Vec<SourceFile>,
        target: Target,
    ) -> Result<StagePlan> {
        if self.pipeline.source_root_template(source).is_some() {
            bail!(
                "{table} cannot be rebuilt: its source '{}' is a template ({}) that names one \
                 interval's files; re-run each interval instead",
                source.name.value,
                source.path()
            );
        }
        let spec = self
            .pipeline
            .bronze(&table.name)
            .context("no such bronze table")?;
        let data = self.source_columns(source, &files).await?;
        let tasks = self.ingest_tasks(&target, spec.files_per_task, &files, &data)?;
        Ok(StagePlan {
            tasks,
            commit: CommitPlan::Replace { position: None },
            target,
            engine: None,
            refresh: Some(Refresh::Full {
                reason: "rebuilt from every source file (rerun --full-refresh)".into(),
            }),
            source_changes: SourceChanges::default(),
        })
    }

    /// The columns each group of `groups` (file locations) holds, from the first records of
    /// its files, less fields named like metadata columns (those are rescued, not columns of
    /// their own). Objects are read from local copies; one blocking task reads them all.
    async fn infer_columns(
        &self,
        source: &SourceSpec,
        groups: Vec<Vec<String>>,
    ) -> Result<Vec<Schema>> {
        let opts = self.pipeline.source_storage_options(source);
        let mut copies: HashMap<String, objects::LocalCopy> = HashMap::new();
        let dir = std::env::temp_dir();
        for location in groups.iter().flatten() {
            if objects::is_object_url(location) && !copies.contains_key(location) {
                let copy = match source.file_format() {
                    // The first records are in the first lines: fetch those only.
                    SourceFormat::Json | SourceFormat::Csv => {
                        objects::local_head_copy(location, &opts, &dir, INFERENCE_SAMPLE_BYTES)
                            .await?
                    }
                    SourceFormat::Parquet => objects::local_copy(location, &opts, &dir).await?,
                };
                copies.insert(location.clone(), copy);
            }
        }
        let local = |location: &String| {
            copies
                .get(location)
                .map_or_else(|| PathBuf::from(location), |copy| copy.path.clone())
        };
        let groups: Vec<Vec<PathBuf>> = groups
            .iter()
            .map(|group| group.iter().map(local).collect())
            .collect();
        // Errors name the object, not its copy.
        let names: HashMap<String, String> = copies
            .iter()
            .map(|(url, copy)| (copy.path.display().to_string(), url.clone()))
            .collect();
        let options = ReadOptions::new(source);
        let inferred = tokio::task::spawn_blocking(move || {
            let infer = |group: &Vec<PathBuf>| {
                let paths: Vec<&Path> = group.iter().map(PathBuf::as_path).collect();
                medallion_sources::infer_schema(&paths, &options, INFERENCE_SAMPLE_ROWS)
            };
            groups.iter().map(infer).collect::<Result<Vec<_>, _>>()
        })
        .await?
        .map_err(|mut e| {
            if let Some(url) = names.get(&e.file) {
                e.file = url.clone();
            }
            e
        })?;
        drop(copies);
        let data_columns = |schema: Schema| {
            let fields = schema.fields().iter();
            let data = fields
                .filter(|f| !meta::is_bronze_column(f.name()))
                .cloned();
            Schema::new(data.collect::<Vec<_>>())
        };
        Ok(inferred.into_iter().map(data_columns).collect())
    }

    /// The data columns of a new bronze table: declared, or inferred from its first files.
    async fn source_columns(&self, source: &SourceSpec, files: &[SourceFile]) -> Result<Schema> {
        if let Some(declared) = &source.schema {
            let fields = declared
                .value
                .iter()
                .map(|c| {
                    let t = medallion_pipeline::types::parse_type(&c.data_type.value)
                        .map_err(anyhow::Error::msg)?;
                    Ok(Field::new(&c.name, t, true))
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Schema::new(fields));
        }
        let all = vec![files.iter().map(|f| f.location.clone()).collect()];
        let inferred = self.infer_columns(source, all).await?.remove(0);
        if inferred.fields().is_empty() {
            let names: Vec<&str> = files.iter().map(|f| f.location.as_str()).collect();
            bail!(
                "source '{}': no columns found in {} (empty files?)",
                source.name.value,
                names.join(", ")
            );
        }
        Ok(medallion_lake::delta_schema(&inferred).as_ref().clone())
    }

    /// The columns new files of an existing bronze table are read into, and how they differ
    /// from the table's: fields new in the files become columns when the source's
    /// `schema_evolution` adds them (see [`SchemaEvolution`]); a column widens to the type its
    /// declared schema (any mode) or its files (`add_new_columns`) give it, when that type
    /// holds every value of the old one ([`medallion_lake::widens`]).
    async fn evolved_columns(
        &self,
        source: &SourceSpec,
        table: &deltalake::DeltaTable,
        files: &[SourceFile],
    ) -> Result<Evolution> {
        let mut columns: Vec<Field> = existing_data_columns(table)?
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut widened = Vec::new();
        if source.schema.is_some() {
            let declared = self.source_columns(source, files).await?;
            widen(&mut columns, &declared, &mut widened);
        }
        let mode = source.schema_evolution();
        if matches!(mode, SchemaEvolution::Rescue | SchemaEvolution::None) {
            return Ok(Evolution {
                columns: Schema::new(columns),
                added: Vec::new(),
                widened,
            });
        }
        // Each new field, with the first file that has it.
        let mut new: Vec<(Field, &str)> = Vec::new();
        let locations = files.iter().map(|f| vec![f.location.clone()]).collect();
        for (file, found) in files
            .iter()
            .zip(self.infer_columns(source, locations).await?)
        {
            let found = medallion_lake::delta_schema(&found);
            if mode == SchemaEvolution::AddNewColumns && source.schema.is_none() {
                widen(&mut columns, &found, &mut widened);
            }
            for field in found.fields() {
                let known = columns.iter().any(|c| c.name() == field.name())
                    || new.iter().any(|(f, _)| f.name() == field.name());
                if !known {
                    new.push((field.as_ref().clone().with_nullable(true), &file.location));
                }
            }
        }
        let added: Vec<String> = new.iter().map(|(f, _)| f.name().clone()).collect();
        if mode == SchemaEvolution::FailOnNewColumns && !new.is_empty() {
            let found: Vec<String> = new
                .iter()
                .map(|(f, location)| format!("'{}' (first in {location})", f.name()))
                .collect();
            bail!(
                "source '{}': new fields {}; schema_evolution: fail_on_new_columns keeps the \
                 table's columns: add them to the source's schema, or set schema_evolution to \
                 add_new_columns or rescue",
                source.name.value,
                found.join(", ")
            );
        }
        columns.extend(new.into_iter().map(|(f, _)| f));
        Ok(Evolution {
            columns: Schema::new(columns),
            added,
            widened,
        })
    }

    async fn plan_silver(&self, table: &TableRef) -> Result<StagePlan> {
        let spec = self
            .pipeline
            .silver(&table.name)
            .context("no such silver table")?;
        let input: TableRef = spec.from.value.parse().map_err(anyhow::Error::msg)?;
        let input_version = self.version_of(&input).await?;
        let inputs = Inputs::from([(input.clone(), input_version)]);
        let uri = self.pipeline.table_uri(table);
        let existing = medallion_lake::open_table(&uri, &self.storage_options).await?;
        let last = self.last_computed(table, existing.as_ref()).await?;
        let up_to_date =
            !self.pending.contains(&input) && self.computed_from(last.as_ref(), &inputs).await?;
        let rebuild = self.rebuild.contains(table);
        if !self.full_refresh && !rebuild && up_to_date {
            let commit = CommitPlan::Overwrite { inputs };
            return Ok(StagePlan::nothing_to_do(commit, self.target(table, None)));
        }
        let refresh = self
            .silver_refresh(spec, last.as_ref(), &input, input_version)
            .await?;
        let keys: Vec<String> = spec.keys.iter().map(|k| k.value.clone()).collect();
        let staged_apart = Some(self.pipeline.staging_uri(self.run_id, table));
        let (target, commit, changes_after) = match &refresh {
            Refresh::Incremental { after_version } if keys.is_empty() => {
                let commit = CommitPlan::Insert { inputs };
                (self.target(table, None), commit, Some(*after_version))
            }
            Refresh::Incremental { after_version } => {
                let latest = refresh::latest_column(spec);
                let commit = CommitPlan::Merge {
                    keys,
                    inputs,
                    latest,
                    incremental: true,
                    replace: spec.mode == WriteMode::Cdc,
                };
                (
                    self.target(table, staged_apart),
                    commit,
                    Some(*after_version),
                )
            }
            // Merging into a table that does not exist yet is writing it.
            Refresh::Full { .. }
                if spec.mode == WriteMode::Merge && existing.is_some() && !rebuild =>
            {
                let commit = CommitPlan::Merge {
                    keys,
                    inputs,
                    latest: None,
                    incremental: false,
                    replace: false,
                };
                (self.target(table, staged_apart), commit, None)
            }
            Refresh::Full { .. } => {
                let commit = CommitPlan::Overwrite { inputs };
                (self.target(table, None), commit, None)
            }
        };
        let tasks = self.silver_tasks(spec, &target, input_version, changes_after);
        Ok(StagePlan {
            tasks,
            commit,
            target,
            engine: None,
            refresh: Some(refresh),
            source_changes: SourceChanges::default(),
        })
    }

    /// One task per key-hash partition of a silver table; without a key the table is one
    /// partition.
    fn silver_tasks(
        &self,
        spec: &SilverSpec,
        target: &Target,
        input_version: u64,
        changes_after: Option<u64>,
    ) -> Vec<Task> {
        let partitions = if spec.keys.is_empty() {
            1
        } else {
            spec.partitions
        };
        (0..partitions)
            .map(|p| {
                let work = Work::Transform(TransformWork {
                    partition: p,
                    partitions,
                    input_version,
                    changes_after,
                });
                self.task(target, p as usize, work)
            })
            .collect()
    }

    async fn plan_gold(&self, table: &TableRef) -> Result<StagePlan> {
        let mut inputs = BTreeMap::new();
        for input in self.pipeline.dag.deps(table) {
            inputs.insert(input.clone(), self.version_of(input).await?);
        }
        let target = self.target(table, None);
        let existing = medallion_lake::open_table(&target.uri, &self.storage_options).await?;
        let last = self.last_computed(table, existing.as_ref()).await?;
        let pending = inputs.keys().any(|t| self.pending.contains(t));
        if !self.rebuild.contains(table)
            && !pending
            && self.computed_from(last.as_ref(), &inputs).await?
        {
            return Ok(StagePlan::nothing_to_do(
                CommitPlan::Overwrite { inputs },
                target,
            ));
        }
        let spec = self
            .pipeline
            .gold(&table.name)
            .context("no such gold table")?;
        let table_version = existing.as_ref().and_then(|t| t.version());
        let (refresh, regroup) = self
            .gold_refresh(spec, last.as_ref(), &inputs, table_version)
            .await?;
        // Touched groups are few: they are recomputed on the task's executor.
        let scheduler = match regroup {
            Some(_) => None,
            None => self.ballista_for(table, &inputs).await?,
        };
        let engine = if scheduler.is_some() {
            Engine::Ballista
        } else {
            Engine::Local
        };
        let work = Work::Aggregate(AggregateWork::new(&inputs, scheduler, regroup.as_ref()));
        Ok(StagePlan {
            tasks: vec![self.task(&target, 0, work)],
            commit: CommitPlan::Overwrite { inputs },
            target,
            engine: Some(engine),
            refresh: Some(refresh),
            source_changes: SourceChanges::default(),
        })
    }

    /// The Ballista scheduler a gold table's query goes to, if any: see [`GoldEngine`].
    async fn ballista_for(&self, table: &TableRef, inputs: &Inputs) -> Result<Option<String>> {
        let (Some(ballista), Some(spec)) = (self.ballista, self.pipeline.gold(&table.name)) else {
            return Ok(None);
        };
        let on = match spec.engine {
            GoldEngine::Local => false,
            GoldEngine::Ballista => true,
            GoldEngine::Auto => {
                let mut bytes = 0;
                for (input, version) in inputs {
                    let uri = self.pipeline.table_uri(input);
                    bytes +=
                        medallion_lake::table_bytes(&uri, &self.storage_options, *version).await?;
                }
                (ballista.executors)() >= 2 && bytes >= ballista.min_input_bytes
            }
        };
        Ok(on.then(|| format!("df://{}", ballista.scheduler)))
    }

    /// What the table's latest commit records about how it was computed; `None` for a table
    /// that does not exist or has no commit.
    /// Whether the table was computed with this spec from inputs holding the rows `inputs`
    /// hold, so computing it again would give the same rows: the same versions, or earlier
    /// ones followed only by commits that change no rows (a compaction, a vacuum).
    async fn computed_from(&self, last: Option<&LastComputed>, inputs: &Inputs) -> Result<bool> {
        let Some(last) = last.filter(|l| l.complete && l.same_spec(self.pipeline)) else {
            return Ok(false);
        };
        let Some(recorded) = last.inputs().filter(|r| r.len() == inputs.len()) else {
            return Ok(false);
        };
        for (input, &version) in inputs {
            let Some(&then) = recorded.get(input) else {
                return Ok(false);
            };
            if then == version {
                continue;
            }
            let uri = self.pipeline.table_uri(input);
            let changes =
                medallion_lake::changes::changes(&uri, &self.storage_options, then, version)
                    .await?;
            if !matches!(changes, Changes::Appended(files) if files.is_empty()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn last_computed(
        &self,
        table: &TableRef,
        existing: Option<&deltalake::DeltaTable>,
    ) -> Result<Option<LastComputed>> {
        let Some(existing) = existing else {
            return Ok(None);
        };
        let Some(last) = existing.history(Some(1)).next().await.transpose()? else {
            return Ok(None);
        };
        let info = last.info;
        let complete = if info.get(INFO_QUARANTINED) != Some(&serde_json::json!(true)) {
            true
        } else {
            self.quarantine_landed(table, &info).await?
        };
        Ok(Some(LastComputed { info, complete }))
    }

    /// Whether the quarantine commit that goes with a table commit (its `info`) landed (see
    /// `CommitContext::commit`).
    async fn quarantine_landed(
        &self,
        table: &TableRef,
        info: &HashMap<String, serde_json::Value>,
    ) -> Result<bool> {
        let Some(id) = info.get(INFO_COMMIT_ID).and_then(|v| v.as_str()) else {
            return Ok(false);
        };
        let Some(quarantine) = self.pipeline.quarantine_table(table) else {
            return Ok(true);
        };
        let uri = self.pipeline.table_uri(&quarantine);
        let Some(q) = medallion_lake::open_table(&uri, &self.storage_options).await? else {
            return Ok(false);
        };
        let expected = serde_json::json!(crate::commit::quarantine_commit_id(id));
        let recent: Vec<_> = q.history(Some(QUARANTINE_LOOKBACK)).try_collect().await?;
        Ok(recent
            .iter()
            .any(|c| c.info.get(INFO_COMMIT_ID) == Some(&expected)))
    }

    /// The current version of an input table, which every task of the stage then reads.
    async fn version_of(&self, table: &TableRef) -> Result<u64> {
        let uri = self.pipeline.table_uri(table);
        let t = medallion_lake::open_table(&uri, &self.storage_options)
            .await?
            .with_context(|| format!("input table {table} has no data yet ({uri})"))?;
        t.version()
            .with_context(|| format!("input table {table} has no version"))
    }
}

/// How far the table's newest ingestion read its source ([`INFO_POSITION`]); `None` for a
/// table without rows.
async fn last_position(
    t: &deltalake::DeltaTable,
    table: &TableRef,
) -> Result<Option<serde_json::Value>> {
    // Newest first; read only as far as the newest commit that records one.
    let mut history = std::pin::pin!(t.history(None));
    while let Some(commit) = history.try_next().await? {
        if let Some(position) = commit.info.get(INFO_POSITION) {
            return Ok(Some(position.clone()));
        }
    }
    if t.snapshot()?.log_data().num_files() == 0 {
        return Ok(None);
    }
    bail!(
        "{table} has rows but no commit in its log records how far its source was read \
         ({INFO_POSITION}); rebuild it from the source with `medallion rerun <run> --full-refresh {table}`"
    )
}

/// How a bronze table of a source that is not files commits what a run read up to
/// `position`: when the source `reads_on` from its last position, appended on the version of
/// `existing` that position was read at; else (a rebuild, or a source read whole: `whole`
/// says why) replacing every row.
fn positioned_commit(
    existing: Option<&deltalake::DeltaTable>,
    reads_on: bool,
    rebuild: bool,
    position: Option<serde_json::Value>,
    whole: &str,
) -> (CommitPlan, Option<Refresh>) {
    let reason = match (reads_on, rebuild) {
        (true, false) => {
            let append = CommitPlan::Append {
                files: Vec::new(),
                ledger_version: existing.and_then(|t| t.version()),
                reingest: Vec::new(),
                position,
            };
            return (append, None);
        }
        (true, true) => "rebuilt from the source (rerun --full-refresh)",
        (false, _) => whole,
    };
    let refresh = Refresh::Full {
        reason: reason.to_string(),
    };
    (CommitPlan::Replace { position }, Some(refresh))
}

impl CommitPlan {
    /// The plan with how far the tasks read a source whose position only the reading tells
    /// (an API's `since`): what each task result says, recorded with the commit.
    pub fn read_up_to(mut self, results: &[medallion_proto::TaskResult]) -> Result<Self> {
        let read = results
            .iter()
            .filter(|r| !r.position_json.is_empty())
            .map(|r| serde_json::from_str(&r.position_json))
            .next()
            .transpose()
            .context("a task's position is not JSON")?;
        if let Some(read) = read {
            match &mut self {
                CommitPlan::Append { position, .. } | CommitPlan::Replace { position } => {
                    *position = Some(read)
                }
                _ => bail!("only bronze commits record how far a source was read"),
            }
        }
        Ok(self)
    }
}

/// A source file as a bronze table's rows recorded it: its size and version when ingested
/// (`None` for rows ingested before Medallion recorded them).
type Ingested = HashMap<String, Option<(i64, String)>>;

/// The source files a bronze table already holds rows of, by identity (identities recorded
/// as absolute paths by older versions made relative to `root`).
///
/// The rows themselves are the ledger: they were committed in the same atomic commit as the
/// record of their file, so a file is never half ingested or ingested twice.
async fn ingested_files(table: &deltalake::DeltaTable, root: &Path) -> Result<Ingested> {
    let ctx = SessionContext::new();
    medallion_lake::register_delta(&ctx, "bronze", table).await?;
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let recorded = [meta::SOURCE_FILE_SIZE, meta::SOURCE_FILE_VERSION]
        .iter()
        .all(|c| schema.field_with_name(c).is_ok());
    let (size, version) = match recorded {
        true => (meta::SOURCE_FILE_SIZE, meta::SOURCE_FILE_VERSION),
        false => ("NULL", "NULL"),
    };
    let sql = format!(
        "SELECT DISTINCT {} AS id, CAST({size} AS BIGINT) AS size, {version} AS version \
         FROM bronze",
        meta::SOURCE_FILE
    );
    let mut files = Ingested::new();
    for batch in ctx.sql(&sql).await?.collect().await? {
        let text = |i: usize| cast(batch.column(i), &DataType::Utf8);
        let (ids, versions) = (text(0)?, text(2)?);
        let (ids, versions) = (ids.as_string::<i32>(), versions.as_string::<i32>());
        let sizes = batch.column(1).as_primitive::<Int64Type>();
        for i in (0..batch.num_rows()).filter(|i| ids.is_valid(*i)) {
            let id = ids.value(i);
            let id = listing::legacy_id(root, id).unwrap_or_else(|| id.to_string());
            let recorded = (sizes.is_valid(i) && versions.is_valid(i))
                .then(|| (sizes.value(i), versions.value(i).to_string()));
            let entry = files.entry(id).or_default();
            if entry.is_none() {
                *entry = recorded;
            }
        }
    }
    Ok(files)
}

/// Splits a listing into files not ingested yet and files ingested before that changed in
/// place since (another size or version than their rows recorded).
fn compare_with_ledger(
    listed: Vec<SourceFile>,
    ingested: &Ingested,
) -> (Vec<SourceFile>, Vec<SourceFile>) {
    let mut new = Vec::new();
    let mut changed = Vec::new();
    for file in listed {
        match ingested.get(&file.id) {
            None => new.push(file),
            Some(Some((size, version)))
                if *size != file.size as i64 || *version != file.version =>
            {
                changed.push(file)
            }
            Some(_) => {}
        }
    }
    (new, changed)
}

/// The data columns of an existing bronze table (all but `_rescued_data` and metadata).
fn existing_data_columns(table: &deltalake::DeltaTable) -> Result<Schema> {
    let schema = table.snapshot()?.snapshot().arrow_schema();
    let data = schema
        .fields()
        .iter()
        .filter(|f| !meta::is_bronze_column(f.name()))
        .map(|f| f.as_ref().clone())
        .collect::<Vec<_>>();
    Ok(Schema::new(data))
}

mod api;
mod database;
mod refresh;
mod stream;

/// The most tasks a bronze stage is split into: beyond it each task takes more files, so a
/// source of millions of small files cannot flood the run's records and the executors.
const MAX_STAGE_TASKS: usize = 10_000;

/// How many of `files` each bronze task reads: what the spec asked, or more when that would
/// make more than [`MAX_STAGE_TASKS`] tasks.
fn files_per_ingest_task(asked: usize, files: usize) -> usize {
    asked.max(files.div_ceil(MAX_STAGE_TASKS))
}
#[cfg(test)]
mod tests;
