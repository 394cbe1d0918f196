//! The pipeline spec as written in YAML.
//!
//! Fields that other parts of the spec refer to, or that are checked after parsing, are
//! [`Spanned`] so that a validation error can point at the file, line and column of the value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TableRef;
pub use serde_saphyr::Spanned;

/// One pipeline: where its tables live, what it reads and the three layers it builds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Pipeline name; used in run ids, logs and Delta commit metadata.
    pub pipeline: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// Where the Delta tables are written. (Spanned here: an untagged enum loses the
    /// places of what it holds.)
    pub lake: Spanned<LakeSpec>,
    /// When a deployed pipeline runs: a cron expression, or a mapping with its time zone,
    /// dates, catch-up and concurrency ([`ScheduleSpec`]).
    #[serde(default)]
    pub schedule: Option<Spanned<ScheduleSpec>>,
    /// Labels for listing and alert routing (`medallion pipelines`, metrics).
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    #[serde(default)]
    pub retries: RetrySpec,
    #[serde(default)]
    pub timeouts: TimeoutSpec,
    /// Upkeep of the tables a run committed, done at the end of the run.
    #[serde(default)]
    pub maintenance: MaintenanceSpec,
    pub sources: Vec<SourceSpec>,
    #[serde(default)]
    pub bronze: Vec<BronzeSpec>,
    #[serde(default)]
    pub silver: Vec<SilverSpec>,
    #[serde(default)]
    pub gold: Vec<GoldSpec>,
}

/// The lake root: a local path (relative to the spec file) or an object store URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LakeSpec {
    Root(Spanned<String>),
    Detailed {
        root: Spanned<String>,
        /// Passed through to deltalake / object_store (e.g. `AWS_REGION`, `AWS_ENDPOINT_URL`).
        #[serde(default)]
        storage_options: BTreeMap<String, String>,
    },
}

/// When a deployed pipeline runs. Each run covers one interval between two ticks of the cron
/// expression (Airflow's data interval): the run for `[t0, t1)` starts at `t1`.
///
/// (Errors point at the whole schedule: serde loses the places of values inside an untagged
/// enum, so the enum is what is [`Spanned`].)
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScheduleSpec {
    Cron(String),
    Detailed(ScheduleDetails),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDetails {
    /// 5 fields, or 6 with seconds first.
    pub cron: String,
    /// IANA time zone the cron expression and `ds` are read in (`Europe/Paris`); UTC if absent.
    #[serde(default)]
    pub timezone: Option<String>,
    /// No interval starts before this date (or RFC 3339 time) in the schedule's time zone.
    #[serde(default)]
    pub start_date: Option<String>,
    /// No interval starts at or after this date (or time).
    #[serde(default)]
    pub end_date: Option<String>,
    /// After a pause or downtime, run every missed interval (true) or only the latest (false).
    #[serde(default)]
    pub catchup: bool,
    /// Runs of this pipeline queued or running at once (scheduled, triggered and backfilled).
    #[serde(default = "default_max_active_runs")]
    pub max_active_runs: u32,
}

fn default_max_active_runs() -> u32 {
    1
}

impl ScheduleSpec {
    pub fn details(&self) -> ScheduleDetails {
        match self {
            ScheduleSpec::Detailed(d) => d.clone(),
            ScheduleSpec::Cron(cron) => ScheduleDetails {
                cron: cron.clone(),
                timezone: None,
                start_date: None,
                end_date: None,
                catchup: false,
                max_active_runs: default_max_active_runs(),
            },
        }
    }
}

/// How a failed task is tried again, for the pipeline (`retries:`) or one table (its own
/// `retries:`, whose fields override the pipeline's).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts per task, the first one included (3 when not given).
    #[serde(default)]
    pub max_attempts: Option<Spanned<u32>>,
    /// Pause after the first failed attempt (`30s`, `5m`; 2s when not given).
    #[serde(default)]
    pub delay: Option<Spanned<String>>,
    /// The older form of `delay`, in seconds.
    #[serde(default)]
    pub delay_seconds: Option<Spanned<u64>>,
    /// `exponential` (the default): the pause doubles after each further attempt, up to
    /// `max_delay`; `fixed`: always `delay`.
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// The longest pause (1h when not given).
    #[serde(default)]
    pub max_delay: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backoff {
    Fixed,
    Exponential,
}

/// How long work may take before it is stopped: a runaway query (a cartesian join, say)
/// must not hold the pipeline for ever.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutSpec {
    /// One attempt of one task (`4h` when not given); a task that runs out fails its table.
    #[serde(default)]
    pub task: Option<Spanned<String>>,
    /// The whole run (`24h` when not given); tables not finished by then fail.
    #[serde(default)]
    pub run: Option<Spanned<String>>,
}

impl TimeoutSpec {
    pub const DEFAULT_TASK: std::time::Duration = std::time::Duration::from_secs(4 * 3600);
    pub const DEFAULT_RUN: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    /// The task timeout (validated, so parsing cannot fail on a loaded pipeline).
    pub fn task(&self) -> std::time::Duration {
        parse_timeout(self.task.as_ref()).unwrap_or(Self::DEFAULT_TASK)
    }

    /// The run timeout.
    pub fn run(&self) -> std::time::Duration {
        parse_timeout(self.run.as_ref()).unwrap_or(Self::DEFAULT_RUN)
    }
}

/// A timeout as written (`30m`, `2h`), between a second and a week.
pub fn parse_timeout(value: Option<&Spanned<String>>) -> Option<std::time::Duration> {
    let d = humantime::parse_duration(&value?.value).ok()?;
    (1..=7 * 24 * 3600).contains(&d.as_secs()).then_some(d)
}

/// Upkeep of the tables a run committed, done at the end of each run (`maintenance:`), so a
/// pipeline that runs every few minutes does not slow its readers down with small files and
/// long logs. Failures are warnings in the run's report: the run's commits stand.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSpec {
    /// A Delta checkpoint once a table has this many commits since its last one, so readers
    /// replay at most that many JSON commits (delta-rs alone: every 100th version).
    #[serde(default)]
    pub checkpoint_interval: Option<Spanned<u64>>,
    /// Compact each committed table once it has `min_files` files (`medallion optimize`).
    #[serde(default)]
    pub optimize: Option<OptimizeMaintenance>,
    /// Vacuum each committed table (`medallion vacuum`).
    #[serde(default)]
    pub vacuum: Option<VacuumMaintenance>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizeMaintenance {
    /// Compact a table from this many files (16 when not given).
    #[serde(default)]
    pub min_files: Option<Spanned<u64>>,
    /// The size files are compacted to (`128MiB`); the table's `delta.targetFileSize` (100 MiB
    /// unless set) when not given.
    #[serde(default)]
    pub target_file_size: Option<Spanned<String>>,
    /// Columns to cluster each table's rows by (Z-order): `{ silver.orders: [customer_id] }`.
    #[serde(default)]
    pub sort_by: BTreeMap<String, Spanned<Vec<String>>>,
}

impl OptimizeMaintenance {
    pub const DEFAULT_MIN_FILES: u64 = 16;

    pub fn min_files(&self) -> u64 {
        self.min_files
            .as_ref()
            .map_or(Self::DEFAULT_MIN_FILES, |m| m.value)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VacuumMaintenance {
    /// How long removed files are kept for time travel (`7d`); the table's
    /// `delta.deletedFileRetentionDuration` (7 days unless set) when not given. A shorter one
    /// than the table's is refused.
    #[serde(default)]
    pub retention: Option<Spanned<String>>,
}

/// File formats a source can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// JSON lines: one object per line.
    #[serde(alias = "jsonl", alias = "ndjson")]
    Json,
    Csv,
    Parquet,
}

/// A place raw data arrives: files matching a path or glob (`format` and `path`), a
/// database (`postgres`), an API (`http`) or a stream (`kafka`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub name: Spanned<String>,
    /// The files' format; required with `path`.
    #[serde(default)]
    pub format: Option<SourceFormat>,
    /// A file, a directory (all files in it) or a glob; relative to the spec file.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// A PostgreSQL table or query, read in parallel ranges.
    #[serde(default)]
    pub postgres: Option<Spanned<PostgresSource>>,
    /// An HTTP JSON API, read page by page.
    #[serde(default)]
    pub http: Option<Spanned<HttpSource>>,
    /// A topic of a Kafka-protocol broker, read partition by partition.
    #[serde(default)]
    pub kafka: Option<Spanned<KafkaSource>>,
    #[serde(default)]
    pub options: FormatOptions,
    /// Declared column types. Without it every column is read as raw text (JSON, CSV) or with
    /// the file's own types (Parquet).
    #[serde(default)]
    pub schema: Option<Spanned<Vec<ColumnType>>>,
    /// What bronze does with fields its table does not have yet [default: `add_new_columns`,
    /// `rescue` for a source with a declared `schema`].
    #[serde(default)]
    pub schema_evolution: Option<SchemaEvolution>,
    /// For a path on object storage (`s3://bucket/prefix/*.jsonl`): options of its store
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, ...), over the lake's. Credentials come from the
    /// environment (`AWS_ACCESS_KEY_ID`, ..., a mounted Secret), never from the spec.
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// What bronze does with a file ingested before whose size or version changed since.
    #[serde(default)]
    pub on_change: OnChange,
}

/// Where a secret is read from: an environment variable, or a file (a mounted Secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret<'a> {
    Env(&'a str),
    File(&'a str),
}

/// What kind of place a source is.
#[derive(Debug, Clone, Copy)]
pub enum SourceKind<'a> {
    Files(SourceFormat),
    Postgres(&'a PostgresSource),
    Http(&'a HttpSource),
    Kafka(&'a KafkaSource),
}

impl SourceSpec {
    /// The source's kind (validation makes sure exactly one is given).
    pub fn kind(&self) -> SourceKind<'_> {
        match (&self.postgres, &self.http, &self.kafka) {
            (Some(pg), _, _) => SourceKind::Postgres(&pg.value),
            (None, Some(http), _) => SourceKind::Http(&http.value),
            (None, None, Some(kafka)) => SourceKind::Kafka(&kafka.value),
            (None, None, None) => SourceKind::Files(self.format.unwrap_or(SourceFormat::Json)),
        }
    }

    /// Where the source's secrets are read from, with the field (below the source) naming
    /// each.
    pub fn secrets(&self) -> Vec<(&'static str, &Spanned<String>, Secret<'_>)> {
        let mut found = Vec::new();
        if let Some(pg) = &self.postgres {
            let pg = &pg.value;
            if let Some(var) = pg.url.value.strip_prefix("env:") {
                found.push(("postgres.url", &pg.url, Secret::Env(var)));
            }
            if let Some(v) = &pg.password_env {
                found.push(("postgres.password_env", v, Secret::Env(&v.value)));
            }
            if let Some(f) = &pg.password_file {
                found.push(("postgres.password_file", f, Secret::File(&f.value)));
            }
        }
        if let Some(auth) = self.http.as_ref().and_then(|h| h.value.auth.as_ref()) {
            if let Some(v) = &auth.value.token_env {
                found.push(("http.auth.token_env", v, Secret::Env(&v.value)));
            }
            if let Some(f) = &auth.value.token_file {
                found.push(("http.auth.token_file", f, Secret::File(&f.value)));
            }
        }
        if let Some(sasl) = self.kafka.as_ref().and_then(|k| k.value.sasl.as_ref()) {
            if let Some(v) = &sasl.value.password_env {
                found.push(("kafka.sasl.password_env", v, Secret::Env(&v.value)));
            }
            if let Some(f) = &sasl.value.password_file {
                found.push(("kafka.sasl.password_file", f, Secret::File(&f.value)));
            }
        }
        found
    }

    /// The files' format (JSON lines for a source that is not files).
    pub fn file_format(&self) -> SourceFormat {
        self.format.unwrap_or(SourceFormat::Json)
    }

    /// The files' path or glob as written (empty for a source that is not files).
    pub fn path(&self) -> &str {
        self.path.as_ref().map_or("", |p| p.value.as_str())
    }

    pub fn schema_evolution(&self) -> SchemaEvolution {
        self.schema_evolution.unwrap_or(match self.schema {
            Some(_) => SchemaEvolution::Rescue,
            None => SchemaEvolution::AddNewColumns,
        })
    }
}

/// A PostgreSQL table or query as a source.
///
/// Each run reads the rows whose `cursor` is past the one its table's last commit recorded,
/// up to the largest `cursor` when the run planned, in `partitions` ranges of `partition_by`
/// read at the same time (one task each), straight into Arrow columns. The cursor read is
/// recorded in the bronze commit that adds the rows, so a run that dies reads again exactly
/// what was not committed. Without a `cursor`, each run reads every row and replaces the
/// table's.
///
/// The password comes from `password_env` or `password_file` (a mounted secret), never from
/// the spec: a `url` with a password in it is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSource {
    /// `postgres://user@host:5432/database`, or `env:NAME` for a URL held in an environment
    /// variable.
    pub url: Spanned<String>,
    /// The environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    /// A file holding the password (its first line).
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
    /// The table (`schema.table`) to read; or `query`.
    #[serde(default)]
    pub table: Option<Spanned<String>>,
    /// A `SELECT` to read the rows of; or `table`.
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    /// A column that only grows (an id, an `updated_at`): each run reads the rows past the
    /// last one committed. Integer, date or timestamp.
    #[serde(default)]
    pub cursor: Option<Spanned<String>>,
    /// An integer, date or timestamp column the rows are split by into `partitions` ranges of
    /// equal width, read at the same time [default: one range].
    #[serde(default)]
    pub partition_by: Option<Spanned<String>>,
    /// How many ranges of `partition_by` [default: 4].
    #[serde(default)]
    pub partitions: Option<Spanned<u32>>,
}

impl PostgresSource {
    pub const DEFAULT_PARTITIONS: u32 = 4;

    pub fn partitions(&self) -> u32 {
        match &self.partition_by {
            Some(_) => self
                .partitions
                .as_ref()
                .map_or(Self::DEFAULT_PARTITIONS, |p| p.value),
            None => 1,
        }
    }
}

/// An HTTP JSON API as a source: `GET url` page by page, the records at a JSON pointer of
/// each response, into bronze like JSON lines (raw text columns, unknown fields rescued).
///
/// With `since`, each run asks for the records after the largest `since.field` the table's
/// last commit recorded (the `since.param` query parameter) and records the new largest with
/// the rows it commits. Requests are paced (`requests_per_second`) and retried on 429 and 5xx
/// (after the `Retry-After` the server gives, else with exponential backoff).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// `https://api.example.com/v1/orders`.
    pub url: Spanned<String>,
    /// Query parameters of every request (no secrets: see `auth`).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Headers of every request (no secrets: see `auth`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub auth: Option<Spanned<HttpAuth>>,
    /// JSON pointer to the records array in a response (`/data/items`) [default: the
    /// response is the array].
    #[serde(default)]
    pub records: Option<Spanned<String>>,
    #[serde(default)]
    pub pagination: Option<Spanned<Pagination>>,
    #[serde(default)]
    pub since: Option<Spanned<Since>>,
    /// The most requests a second [default: 10].
    #[serde(default)]
    pub requests_per_second: Option<Spanned<f64>>,
    /// Attempts per request on 429, 5xx and connection errors [default: 5].
    #[serde(default)]
    pub max_attempts: Option<Spanned<u32>>,
}

impl HttpSource {
    pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 10.0;
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
}

/// A header carrying a secret read from the environment or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAuth {
    /// [default: `Authorization`]
    #[serde(default)]
    pub header: Option<String>,
    /// Written before the secret (`Bearer `) [default: none].
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub token_env: Option<Spanned<String>>,
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
}

/// How the next page is asked for; without one, there is one page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pagination {
    pub style: PaginationStyle,
    /// The query parameter of the page number (`page`) or of the cursor (`cursor`).
    #[serde(default)]
    pub param: Option<String>,
    /// `cursor`: JSON pointer to the next page's cursor in a response (`/next`); none or
    /// null ends.
    #[serde(default)]
    pub next: Option<String>,
    /// `page`: the first page's number [default: 1].
    #[serde(default)]
    pub start: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaginationStyle {
    /// `param=1, 2, ...` until a page has no records.
    Page,
    /// `param=<the previous response's next>` until it has none.
    Cursor,
    /// The URL of the `Link` header's `rel="next"` until there is none.
    Link,
}

/// Incremental reads: the records past the largest value of a field read so far.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The query parameter given the last largest value (`updated_since`).
    pub param: String,
    /// The records' field whose largest value is recorded (`updated_at`): numbers compare
    /// as numbers, anything else as text (ISO 8601 times in one format do).
    pub field: String,
}

/// A topic of a Kafka-protocol broker as a source: its records' values are JSON objects,
/// read into bronze like JSON lines (raw text columns, unknown fields rescued), beside
/// `_topic`, `_partition`, `_offset`, `_timestamp` and `_key`.
///
/// Each run reads every partition from the offset the table's last commit recorded up to the
/// end the partition had when the run planned, one task per range of at most
/// `records_per_task` records, and records the offsets reached in the bronze commit that adds
/// the records (not in the broker: no consumer group), so a run that dies reads again exactly
/// what was not committed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Bootstrap brokers: `[kafka-1:9092, kafka-2:9092]`.
    pub brokers: Spanned<Vec<String>>,
    pub topic: Spanned<String>,
    /// SASL authentication [default: none].
    #[serde(default)]
    pub sasl: Option<Spanned<KafkaSasl>>,
    /// The most records one task reads [default: 1,000,000].
    #[serde(default)]
    pub records_per_task: Option<Spanned<u64>>,
    /// What a run does when records it has not read yet were deleted by the topic's
    /// retention [default: `fail`].
    #[serde(default)]
    pub on_data_loss: OnDataLoss,
}

impl KafkaSource {
    pub const DEFAULT_RECORDS_PER_TASK: u64 = 1_000_000;

    pub fn records_per_task(&self) -> u64 {
        self.records_per_task
            .as_ref()
            .map_or(Self::DEFAULT_RECORDS_PER_TASK, |r| r.value)
    }
}

/// SASL credentials for a broker: the password from the environment or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    #[serde(default)]
    pub password_env: Option<Spanned<String>>,
    #[serde(default)]
    pub password_file: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

/// Records a run should read are gone (retention deleted them before they were ingested).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDataLoss {
    /// Fail the table, naming the partition and the offsets lost.
    #[default]
    Fail,
    /// Warn in the run's log and read on from the oldest record left.
    Skip,
}

/// Auto Loader's schema evolution modes, for fields that appear in files a bronze table
/// ingests after it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaEvolution {
    /// Each new field becomes a new nullable column, in the commit of the rows that bring it;
    /// earlier rows read NULL in it.
    AddNewColumns,
    /// The table keeps its columns; new fields are kept as JSON in `_rescued_data`.
    Rescue,
    /// New fields fail the table's ingestion, naming them and their files; nothing is
    /// committed until the source's `schema` or this mode changes.
    FailOnNewColumns,
    /// The table keeps its columns and new fields are dropped: neither columns nor rescued.
    None,
}

/// What bronze does with a source file it ingested before that has changed in place since
/// (another size, or another version: an object's ETag, a file's modification time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnChange {
    /// The change is reported (a warning in the run's summary) and the file's rows stay as
    /// they were ingested.
    #[default]
    Skip,
    /// The file's rows are replaced by its new contents, in the commit of the run's other
    /// new files.
    Reingest,
    /// The table fails before anything is written, naming the changed files.
    Fail,
}

/// A declared column of a source schema.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnType {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: Spanned<String>,
}

/// Format options; only CSV has any today.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormatOptions {
    /// Whether the first CSV line names the columns.
    pub header: bool,
    /// CSV field delimiter, one ASCII character.
    pub delimiter: Spanned<String>,
}

impl Default for FormatOptions {
    fn default() -> Self {
        Self {
            header: true,
            delimiter: Spanned::new(
                ",".into(),
                serde_saphyr::Location::UNKNOWN,
                serde_saphyr::Location::UNKNOWN,
            ),
        }
    }
}

/// A bronze table: raw rows of one source plus ingestion metadata, append-only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BronzeSpec {
    pub name: Spanned<String>,
    pub source: Spanned<String>,
    /// How many source files one ingest task reads.
    #[serde(default = "default_files_per_task")]
    pub files_per_task: usize,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Overrides the pipeline's `retries` for this table's tasks.
    #[serde(default)]
    pub retries: Option<RetrySpec>,
    /// One attempt of one of this table's tasks (overrides `timeouts.task`).
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

fn default_files_per_task() -> usize {
    4
}

/// How a silver table is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Replace the whole table.
    #[default]
    Overwrite,
    /// Upsert by key: matched keys are replaced, new keys inserted.
    Merge,
    /// Apply a change feed (inserts, updates, deletes, truncates ordered by `sequence_by`) as
    /// a slowly changing dimension of `stored_as_scd_type` 1 or 2.
    Cdc,
}

/// A silver table: typed, cleaned, deduplicated rows of a bronze (or silver) table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilverSpec {
    pub name: Spanned<String>,
    /// The input table, `bronze.<name>` or `silver.<name>`.
    pub from: Spanned<String>,
    /// Business key; rows are deduplicated and merged on it.
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    /// SQL expression over the input row; among rows with the same key the one with the
    /// greatest value wins (ties: latest `_ingested_at`, then latest `_source_file`).
    #[serde(default)]
    pub latest_by: Option<Spanned<String>>,
    /// SQL predicates over the output columns; a row is kept when all are true.
    #[serde(default)]
    pub filters: Vec<Spanned<String>>,
    /// Output columns, in order.
    pub columns: Vec<SilverColumn>,
    #[serde(default)]
    pub mode: WriteMode,
    /// How many key-hash partitions the stage is split into (one task each); a table
    /// without keys is always one partition.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// Record the table's row changes in Delta's change data feed
    /// (`delta.enableChangeDataFeed`), for consumers that read changes.
    #[serde(default)]
    pub change_data_feed: bool,
    /// `mode: cdc`: SQL over the table's columns that orders a key's changes; changes are
    /// applied in its order, never in arrival order (NULL counts as oldest).
    #[serde(default)]
    pub sequence_by: Option<Spanned<String>>,
    /// `mode: cdc`: SQL predicate over the columns marking a change that deletes its key.
    #[serde(default)]
    pub apply_as_deletes: Option<Spanned<String>>,
    /// `mode: cdc`, type 1: SQL predicate marking a change that empties the table; changes
    /// sequenced after it apply to the empty table.
    #[serde(default)]
    pub apply_as_truncates: Option<Spanned<String>>,
    /// `mode: cdc`: columns computed for the conditions above but not stored.
    #[serde(default)]
    pub except_columns: Vec<Spanned<String>>,
    /// `mode: cdc`: 1 keeps the latest row per key; 2 keeps every version of a key's row,
    /// each with the sequence values that opened and closed it (`__start_at`, `__end_at`).
    #[serde(default = "default_scd_type")]
    pub stored_as_scd_type: Spanned<u8>,
    /// `mode: cdc`, type 2: the columns whose changes open a new version; a change to other
    /// columns only updates the current version. Default: every stored column.
    #[serde(default)]
    pub track_history_columns: Vec<Spanned<String>>,
    /// Overrides the pipeline's `retries` for this table's tasks.
    #[serde(default)]
    pub retries: Option<RetrySpec>,
    /// One attempt of one of this table's tasks (overrides `timeouts.task`).
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

fn default_scd_type() -> Spanned<u8> {
    Spanned::new(
        1,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

impl SilverSpec {
    /// The columns the table stores: its columns without `except_columns`, and for a type 2
    /// CDC table the version bounds [`SCD_START`] and [`SCD_END`].
    pub fn stored_columns(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .columns
            .iter()
            .map(|c| c.name.value.as_str())
            .filter(|n| !self.except_columns.iter().any(|e| e.value == *n))
            .collect();
        if self.scd_type() == Some(2) {
            names.extend([SCD_START, SCD_END]);
        }
        names
    }

    /// The SCD type of a `mode: cdc` table; `None` for other modes.
    pub fn scd_type(&self) -> Option<u8> {
        (self.mode == WriteMode::Cdc).then_some(self.stored_as_scd_type.value)
    }
}

/// In a type 2 CDC table: the `sequence_by` value of the change that opened a version.
pub const SCD_START: &str = "__start_at";
/// In a type 2 CDC table: the `sequence_by` value of the change that closed a version (an
/// update of a tracked column or a delete); NULL while it is the key's current version.
pub const SCD_END: &str = "__end_at";

/// In the rows an incremental refresh of a CDC table stages: true on a row that only names a
/// key the new changes touched (its other columns NULL). The rows of such a key are recomputed
/// from all its changes, and they replace every stored row of the key.
pub const TOUCHED_KEY: &str = "__medallion_touched_key";

fn default_partitions() -> u32 {
    2
}

/// One output column of a silver table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilverColumn {
    pub name: Spanned<String>,
    /// SQL expression over the input row; defaults to the input column of the same name.
    #[serde(default)]
    pub expr: Option<Spanned<String>>,
    /// Declared type; a non-null value that cannot be cast to it, in a row that passes the
    /// filters, fails the table.
    #[serde(default, rename = "type")]
    pub data_type: Option<Spanned<String>>,
}

impl SilverColumn {
    /// The SQL expression that computes this column.
    pub fn expr_sql(&self) -> String {
        match &self.expr {
            Some(e) => e.value.clone(),
            None => crate::sql::quote_ident(&self.name.value),
        }
    }
}

/// A gold table: a SQL query over silver and gold tables, rewritten on every run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldSpec {
    pub name: Spanned<String>,
    pub sql: Spanned<String>,
    /// Where the query runs.
    #[serde(default)]
    pub engine: GoldEngine,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// As for silver tables.
    #[serde(default)]
    pub change_data_feed: bool,
    /// Overrides the pipeline's `retries` for this table's tasks.
    #[serde(default)]
    pub retries: Option<RetrySpec>,
    /// One attempt of one of this table's tasks (overrides `timeouts.task`).
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

/// Where a gold query runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GoldEngine {
    /// Ballista on a cluster of two or more executors when the inputs are large (the
    /// coordinator's `--ballista-min-input`), one executor's DataFusion otherwise.
    #[default]
    Auto,
    /// One executor's DataFusion.
    Local,
    /// Ballista across the executors whenever a cluster runs the pipeline (embedded mode
    /// runs it locally).
    Ballista,
}

/// What a quality check asserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// No row has a NULL in the column(s).
    NotNull,
    /// No two rows share the value(s) of the column(s).
    Unique,
    /// Every non-null value lies within `min`..=`max`.
    Range,
    /// Every row satisfies the SQL predicate `expr`.
    Expression,
    /// Every non-null value of the column(s) is one of `values`.
    AcceptedValues,
    /// Every non-null value of the column(s), as text, matches the regular expression
    /// `pattern` (unanchored: write `^...$` to match the whole value).
    Regex,
    /// The table has between `min` and `max` rows.
    RowCount,
    /// The newest value of the timestamp `column` is at most `max_age` old.
    Freshness,
    /// Every non-null value of `column` exists in `references` (`layer.table.column`).
    ForeignKey,
}

/// What happens when a check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The run fails and the table's commit does not happen.
    Critical,
    /// Recorded and reported; the commit happens.
    Warning,
    /// Recorded and reported; the commit happens.
    Info,
}

impl Severity {
    /// As written in a spec.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// What happens to a table whose check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The table's commit does not happen and the run fails (default for `critical`).
    Fail,
    /// Failing rows are removed and counted (row checks of silver and gold tables).
    Drop,
    /// Failing rows go to the Delta table `<table>__quarantine`, with the run id, the names of
    /// the checks they failed and when (row checks of silver and gold tables).
    Quarantine,
    /// Rows are kept and the failure reported (default for `warning` and `info`).
    Warn,
}

impl Action {
    /// Whether rows failing the check are taken out of the table as it is written.
    pub fn screens_rows(self) -> bool {
        matches!(self, Self::Drop | Self::Quarantine)
    }
}

/// A bound of a range check: a number, or text such as a date.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Bound {
    Number(f64),
    Text(String),
}

impl Bound {
    /// False for NaN and infinities, as numbers or as YAML writes them (`.nan`, `-.inf`),
    /// which no column can be compared with.
    pub fn is_finite(&self) -> bool {
        match self {
            Bound::Number(n) => n.is_finite(),
            Bound::Text(t) => {
                let t = t
                    .trim()
                    .trim_start_matches(['+', '-'])
                    .trim_start_matches('.');
                !["nan", "inf", "infinity"].contains(&t.to_ascii_lowercase().as_str())
            }
        }
    }
}

/// A data quality check on a table's rows as they would be after the commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub name: Spanned<String>,
    pub check: CheckKind,
    #[serde(default)]
    pub column: Option<Spanned<String>>,
    #[serde(default)]
    pub columns: Vec<Spanned<String>>,
    #[serde(default)]
    pub min: Option<Bound>,
    #[serde(default)]
    pub max: Option<Bound>,
    #[serde(default)]
    pub expr: Option<Spanned<String>>,
    /// `accepted_values`: the values allowed.
    #[serde(default)]
    pub values: Vec<Bound>,
    /// `regex`: the pattern values match.
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    /// `freshness`: how old the newest value may be, e.g. `6h`, `2days`.
    #[serde(default)]
    pub max_age: Option<Spanned<String>>,
    /// `foreign_key`: the column values must exist in, `layer.table.column`.
    #[serde(default)]
    pub references: Option<Spanned<String>>,
    pub severity: Severity,
    /// What a failure does [default: `fail` for critical checks, `warn` for the others].
    #[serde(default)]
    pub action: Option<Action>,
}

impl CheckSpec {
    /// The columns the check is about (`column` and `columns` together).
    pub fn all_columns(&self) -> Vec<&Spanned<String>> {
        self.column.iter().chain(self.columns.iter()).collect()
    }

    /// The action, explicit or by severity.
    pub fn action(&self) -> Action {
        self.action.unwrap_or(match self.severity {
            Severity::Critical => Action::Fail,
            Severity::Warning | Severity::Info => Action::Warn,
        })
    }

    /// `max_age` of a freshness check.
    pub fn max_age(&self) -> Result<std::time::Duration, String> {
        let age = self
            .max_age
            .as_ref()
            .ok_or("a freshness check needs 'max_age'")?;
        humantime::parse_duration(&age.value)
            .map_err(|e| format!("'{}' is not a duration such as 6h or 2days: {e}", age.value))
    }

    /// The table and column a foreign key check references.
    pub fn reference(&self) -> Result<(TableRef, String), String> {
        let target = self
            .references
            .as_ref()
            .ok_or("a foreign_key check needs 'references: layer.table.column'")?;
        let (table, column) = target
            .value
            .rsplit_once('.')
            .ok_or_else(|| format!("'{}' is not layer.table.column", target.value))?;
        Ok((table.parse()?, column.to_string()))
    }
}
