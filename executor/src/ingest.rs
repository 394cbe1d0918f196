//! Bronze: source files, a database's rows, an API's or a topic's records to raw rows plus
//! ingestion metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, Date32Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use futures::StreamExt;
use medallion_lake::copy::ChunkCopy;
use medallion_lake::{Written, objects};
use medallion_pipeline::meta;
use medallion_pipeline::spec::{
    HttpSource, KafkaSource, PostgresSource, SchemaEvolution, SourceFormat, SourceKind, SourceSpec,
};
use medallion_proto::{
    ApiRead, DatabaseSlice, IngestWork, SourceFile, StreamRange, TaskError, TaskMetrics,
};
use medallion_sources::kafka::{self, KafkaError, Topic};
use medallion_sources::postgres::{Connection, PgError, Postgres};
use medallion_sources::{ReadOptions, SourceError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{Output, TaskContext, transient};

/// The bronze table schema for the given data columns: data, `_rescued_data`, then metadata.
fn bronze_schema(data: &Schema) -> SchemaRef {
    let read = medallion_sources::with_rescued_column(data);
    let mut fields: Vec<Field> = read.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([
        ingested_at_field(),
        Field::new(meta::SOURCE_FILE, DataType::Utf8, false),
        // Nullable: tables made before they were recorded gain them as new columns.
        Field::new(meta::SOURCE_FILE_SIZE, DataType::Int64, true),
        Field::new(meta::SOURCE_FILE_VERSION, DataType::Utf8, true),
        Field::new(meta::SOURCE_NAME, DataType::Utf8, false),
        Field::new(meta::INGESTION_DATE, DataType::Date32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The bronze schema of rows a source sends typed (a database's, a topic's): their columns,
/// then the metadata that is not about files.
fn typed_schema(data: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = data.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([
        ingested_at_field(),
        Field::new(meta::SOURCE_NAME, DataType::Utf8, false),
        Field::new(meta::INGESTION_DATE, DataType::Date32, false),
    ]);
    Arc::new(Schema::new(fields))
}

fn ingested_at_field() -> Field {
    Field::new(
        meta::INGESTED_AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

/// Days since the epoch of the ingestion time: `_ingestion_date`, bronze's partition.
fn ingestion_days(at: DateTime<Utc>) -> i32 {
    at.date_naive()
        .signed_duration_since(DateTime::UNIX_EPOCH.date_naive())
        .num_days() as i32
}

pub(crate) async fn run(ctx: &TaskContext, work: IngestWork) -> Result<Output, TaskError> {
    let bronze = ctx
        .pipeline
        .bronze(&ctx.table.name)
        .ok_or_else(|| TaskError::permanent(format!("no bronze table '{}'", ctx.table.name)))?;
    let source = ctx
        .pipeline
        .source(&bronze.source.value)
        .ok_or_else(|| TaskError::permanent(format!("no source '{}'", bronze.source.value)))?;
    let data = work
        .data_schema()
        .map_err(|e| TaskError::permanent(format!("{e:#}")))?;
    let ingested_at = DateTime::<Utc>::from_timestamp_micros(work.ingested_at_micros)
        .ok_or_else(|| TaskError::permanent("ingestion time out of range"))?;
    if let (Some(slice), SourceKind::Postgres(pg)) = (&work.database, source.kind()) {
        let rows = DatabaseRows {
            source: &source.name.value,
            pg,
            data,
            ingested_at,
        };
        return rows.ingest(ctx, slice).await;
    }
    let reader = |data: SchemaRef| {
        let schema = bronze_schema(&data);
        let options = ReadOptions::new(source);
        FileIngest {
            copy: Copies::to(ctx, &options, &schema, data.fields().len()),
            options,
            schema,
            data,
            source_name: source.name.value.clone(),
            ingested_at,
            objects: Objects {
                storage_options: ctx.pipeline.source_storage_options(source),
                dir: ctx.scratch_dir.clone(),
                runtime: tokio::runtime::Handle::current(),
            },
        }
    };
    if let (Some(range), SourceKind::Kafka(kafka)) = (&work.stream, source.kind()) {
        return stream_records(ctx, source, kafka, range, data, ingested_at).await;
    }
    if let (Some(read), SourceKind::Http(api)) = (&work.api, source.kind()) {
        return api_records(ctx, source, api, read, data, reader).await;
    }
    ingest_files(ctx, reader(data), work.files).await
}

/// Reads `files` on a blocking thread, writing their rows as they come, a few batches at a
/// time.
async fn ingest_files(
    ctx: &TaskContext,
    reader: FileIngest,
    files: Vec<SourceFile>,
) -> Result<Output, TaskError> {
    let schema = reader.schema.clone();
    let (tx, mut rx) = mpsc::channel::<anyhow::Result<RecordBatch>>(4);
    let reading = tokio::task::spawn_blocking(move || reader.read_all(&files, &tx));
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let written = ctx
        .write_files(
            &ctx.output_uri,
            schema.clone(),
            &ctx.partition_columns,
            batches,
        )
        .await;
    let (metrics, copied) = reading
        .await
        .map_err(transient)?
        .map_err(|e| TaskError::permanent(format!("bronze.{}: {e}", ctx.table.name)))?;
    let mut written = written.map_err(transient)?;
    written.adds.extend(copied.adds);
    written.write_time += copied.write_time;
    Ok(Output::new(written, schema, metrics))
}

/// Reads files into bronze batches.
struct FileIngest {
    options: ReadOptions,
    data: SchemaRef,
    schema: SchemaRef,
    source_name: String,
    ingested_at: DateTime<Utc>,
    objects: Objects,
    /// Where Parquet files whose columns are the table's go without being decoded into
    /// batches; `None` for other formats.
    copy: Option<Copies>,
}

/// Where a task writes the Parquet files it copies ([`medallion_lake::copy`]): a file whose
/// columns are exactly the table's data columns keeps its encoded pages, with the metadata
/// columns encoded beside them, instead of being decoded and encoded again.
struct Copies {
    uri: String,
    subdir: String,
    storage_options: medallion_lake::StorageOptions,
    /// The bronze columns a data file stores (all but the partition columns), data first.
    stored: Schema,
    partition_columns: Vec<String>,
    stop: tokio_util::sync::CancellationToken,
}

impl Copies {
    /// Copies for a Parquet source whose partition columns are all metadata columns (a copy
    /// writes a whole file into one partition).
    fn to(
        ctx: &TaskContext,
        options: &ReadOptions,
        schema: &Schema,
        data_columns: usize,
    ) -> Option<Self> {
        let metadata = &schema.fields()[data_columns..];
        let partitions_by_metadata = ctx
            .partition_columns
            .iter()
            .all(|p| metadata.iter().any(|f| f.name() == p));
        if options.format != SourceFormat::Parquet || !partitions_by_metadata {
            return None;
        }
        let stored = schema
            .fields()
            .iter()
            .filter(|f| !ctx.partition_columns.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>();
        Some(Self {
            uri: ctx.output_uri.clone(),
            subdir: ctx.dispatch_dir.clone(),
            storage_options: ctx.storage_options.clone(),
            stored: Schema::new(stored),
            partition_columns: ctx.partition_columns.clone(),
            stop: ctx.stop.clone(),
        })
    }
}

/// Where a task's source objects are copied to be read.
struct Objects {
    storage_options: medallion_lake::StorageOptions,
    /// The executor's scratch directory: a killed executor's copies are removed by the next.
    dir: PathBuf,
    runtime: tokio::runtime::Handle,
}

impl Objects {
    /// A local copy of `location` if it is an object (read, then deleted), else nothing.
    fn copy(&self, location: &str) -> Result<Option<objects::LocalCopy>, SourceError> {
        if !objects::is_object_url(location) {
            return Ok(None);
        }
        let copied = objects::local_copy(location, &self.storage_options, &self.dir);
        let copy = self.runtime.block_on(copied).map_err(|e| SourceError {
            file: location.to_string(),
            line: None,
            message: format!("{e:#}"),
        })?;
        Ok(Some(copy))
    }
}

impl FileIngest {
    /// Reads every file; the metrics, and the files written by copying.
    fn read_all(
        &self,
        files: &[SourceFile],
        tx: &mpsc::Sender<anyhow::Result<RecordBatch>>,
    ) -> Result<(TaskMetrics, Written), SourceError> {
        let mut metrics = TaskMetrics::default();
        let mut copied = Written::default();
        for file in files {
            let copy = self.objects.copy(&file.path)?;
            let path = copy
                .as_ref()
                .map_or(Path::new(&file.path), |c| c.path.as_path());
            let read = match self.copied(path, file, &mut metrics, &mut copied) {
                Ok(Copied::No) => self.read_one(path, file, &mut metrics, tx),
                Ok(Copied::Yes) => Ok(true),
                Ok(Copied::Stopped) => Ok(false),
                Err(e) => Err(e),
            };
            // Errors name the object, not its copy.
            let go_on = read.map_err(|e| match copy {
                Some(_) => SourceError {
                    file: file.path.clone(),
                    ..e
                },
                None => e,
            })?;
            if !go_on {
                break;
            }
        }
        Ok((metrics, copied))
    }

    /// Copies the Parquet file at `path` into a data file of its own when its columns are
    /// the table's. Every value is still decoded once, and thrown away: a file that does not
    /// read fails here, naming it, rather than in silver, from a bronze table that holds it.
    fn copied(
        &self,
        path: &Path,
        file: &SourceFile,
        metrics: &mut TaskMetrics,
        copied: &mut Written,
    ) -> Result<Copied, SourceError> {
        let Some(to) = &self.copy else {
            return Ok(Copied::No);
        };
        if to.stop.is_cancelled() {
            return Ok(Copied::Stopped);
        }
        let real = self.real_path(path, file);
        let opened = medallion_sources::open(path, real)?;
        let failed = |e: anyhow::Error| SourceError::new(path, format!("{e:#}"));
        let data_columns = self.data.fields().len();
        let Some(copy) = ChunkCopy::plan(&opened, &to.stored, data_columns)
            .map_err(|e| SourceError::new(path, format!("not a readable Parquet file: {e:#}")))?
        else {
            return Ok(Copied::No);
        };
        let mut rows = 0;
        for chunk in medallion_sources::read_file(path, real, &self.options, &self.data)? {
            rows += chunk?.batch.num_rows() as u64;
        }
        if rows != copy.rows() {
            return Err(failed(anyhow::anyhow!(
                "{rows} rows read, {} in its footer",
                copy.rows()
            )));
        }
        let started = std::time::Instant::now();
        let constants = self.constants(file, &to.stored, &to.partition_columns);
        let add = copy.write(
            &to.uri,
            &to.subdir,
            &to.storage_options,
            &constants,
            &to.partition_columns,
        );
        copied
            .adds
            .push(self.objects.runtime.block_on(add).map_err(failed)?);
        copied.write_time += started.elapsed();
        metrics.rows_read += rows;
        metrics.rows_written += rows;
        metrics.files_read += 1;
        metrics.bytes_read += std::fs::metadata(path).map_or(0, |m| m.len());
        Ok(Copied::Yes)
    }

    /// The value of each column that is not the source's, in the order a copy writes them:
    /// stored columns, then partition columns.
    fn constants(
        &self,
        file: &SourceFile,
        stored: &Schema,
        partition_columns: &[String],
    ) -> Vec<ScalarValue> {
        let values = self.metadata(file);
        let data_columns = self.data.fields().len();
        let value = |name: &str| {
            let i = self.schema.index_of(name).expect("a bronze column");
            values[i - data_columns].clone()
        };
        stored.fields()[data_columns..]
            .iter()
            .map(|f| value(f.name()))
            .chain(partition_columns.iter().map(|p| value(p)))
            .collect()
    }

    /// An object's local copy is ours; a local file must still be the one planned.
    fn real_path<'a>(&self, path: &Path, file: &'a SourceFile) -> Option<&'a Path> {
        (path == Path::new(&file.path) && !file.real_path.is_empty())
            .then(|| Path::new(&file.real_path))
    }

    /// The values every row of `file` has after the source's columns: `_rescued_data` (none
    /// in a file read as it is), then the ingestion metadata.
    fn metadata(&self, file: &SourceFile) -> Vec<ScalarValue> {
        let utc = Some("UTC".into());
        vec![
            ScalarValue::Utf8(None),
            ScalarValue::TimestampMicrosecond(Some(self.ingested_at.timestamp_micros()), utc),
            ScalarValue::Utf8(Some(file.id.clone())),
            ScalarValue::Int64(Some(file.size)),
            ScalarValue::Utf8(Some(file.version.clone())),
            ScalarValue::Utf8(Some(self.source_name.clone())),
            ScalarValue::Date32(Some(ingestion_days(self.ingested_at))),
        ]
    }

    /// Reads one file from `path`; false when the writer stopped taking batches.
    fn read_one(
        &self,
        path: &Path,
        file: &SourceFile,
        metrics: &mut TaskMetrics,
        tx: &mpsc::Sender<anyhow::Result<RecordBatch>>,
    ) -> Result<bool, SourceError> {
        let real = self.real_path(path, file);
        for chunk in medallion_sources::read_file(path, real, &self.options, &self.data)? {
            let chunk = chunk?;
            let rows = chunk.batch.num_rows();
            let batch = self
                .with_metadata(chunk.batch, file)
                .map_err(|e| SourceError::new(path, e))?;
            metrics.rows_read += rows as u64;
            metrics.rows_written += rows as u64;
            metrics.rows_rescued += chunk.rescued as u64;
            metrics.rows_malformed += chunk.malformed as u64;
            if tx.blocking_send(Ok(batch)).is_err() {
                // The writer stopped; its error is what the task reports.
                return Ok(false);
            }
        }
        metrics.files_read += 1;
        metrics.bytes_read += std::fs::metadata(path).map_or(0, |m| m.len());
        Ok(true)
    }

    /// A batch of the source's columns and `_rescued_data`, with the metadata after them.
    fn with_metadata(
        &self,
        batch: RecordBatch,
        file: &SourceFile,
    ) -> datafusion::error::Result<RecordBatch> {
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for value in &self.metadata(file)[1..] {
            columns.push(value.to_array_of_size(n)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// What became of a file [`FileIngest::copied`] was given.
enum Copied {
    /// Copied into a data file.
    Yes,
    /// Not copyable: to be read into batches.
    No,
    /// The task was stopped.
    Stopped,
}

/// An API's records: fetched page by page into a JSON lines file in the scratch directory,
/// then read like a source file (`_source_file` is the API's URL). The columns are the
/// table's, plus the fields new in the records when the source adds new columns (all of them
/// for a new table).
async fn api_records(
    ctx: &TaskContext,
    source: &SourceSpec,
    api: &HttpSource,
    read: &ApiRead,
    data: SchemaRef,
    reader: impl FnOnce(SchemaRef) -> FileIngest,
) -> Result<Output, TaskError> {
    let failed = |e: String| TaskError::transient(format!("bronze.{}: {e}", ctx.table.name));
    let since: Option<serde_json::Value> = match read.since_json.as_str() {
        "" => None,
        json => Some(serde_json::from_str(json).map_err(|e| TaskError::permanent(e.to_string()))?),
    };
    let lines = tempfile::Builder::new()
        .prefix("api-")
        .suffix(".jsonl")
        .tempfile_in(&ctx.scratch_dir)
        .map_err(transient)?;
    let mut out = std::io::BufWriter::new(lines.as_file());
    let fetched = medallion_sources::http::fetch(&ctx.pipeline, api, since.as_ref(), &mut out)
        .await
        .map_err(|e| failed(e.to_string()))?;
    std::io::Write::flush(&mut out).map_err(transient)?;
    drop(out);
    tracing::info!(source = %source.name.value, records = fetched.records, pages = fetched.pages, "API read");
    let options = ReadOptions::new(source);
    let found = medallion_sources::infer_schema(&[lines.path()], &options, usize::MAX)
        .map_err(|e| failed(e.to_string()))?;
    let adds =
        data.fields().is_empty() || source.schema_evolution() == SchemaEvolution::AddNewColumns;
    let mut fields: Vec<Field> = data.fields().iter().map(|f| f.as_ref().clone()).collect();
    for f in found.fields().iter().filter(|_| adds) {
        if data.field_with_name(f.name()).is_err() {
            fields.push(f.as_ref().clone());
        }
    }
    let size = lines.as_file().metadata().map_err(transient)?.len();
    let file = SourceFile {
        path: lines.path().display().to_string(),
        id: api.url.value.clone(),
        size: size as i64,
        version: read.since_json.clone(),
        real_path: String::new(),
    };
    let mut output = match fetched.records {
        0 => {
            let nothing = medallion_lake::Written {
                adds: Vec::new(),
                write_time: std::time::Duration::ZERO,
            };
            let schema = bronze_schema(&Schema::new(fields));
            Output::new(nothing, schema, TaskMetrics::default())
        }
        _ => ingest_files(ctx, reader(Arc::new(Schema::new(fields))), vec![file]).await?,
    };
    output.position = fetched
        .since
        .map(|since| serde_json::json!({ "since": since }));
    Ok(output)
}

/// One task's slice of a database source's rows.
struct DatabaseRows<'a> {
    source: &'a str,
    pg: &'a PostgresSource,
    data: SchemaRef,
    ingested_at: DateTime<Utc>,
}

impl DatabaseRows<'_> {
    /// Reads the slice's rows and writes them as they come, a few batches at a time.
    async fn ingest(&self, ctx: &TaskContext, slice: &DatabaseSlice) -> Result<Output, TaskError> {
        let failed = |e: PgError| TaskError::transient(format!("bronze.{}: {e}", ctx.table.name));
        let connection = Connection::resolve(&ctx.pipeline, self.pg)
            .map_err(|e| TaskError::permanent(format!("source '{}': {e}", self.source)))?;
        let db = Postgres::connect(self.pg, self.source, &connection)
            .await
            .map_err(failed)?;
        let read = async |tx: mpsc::Sender<RecordBatch>| db.read(&slice.sql, &self.data, &tx).await;
        let typed = TypedRows {
            source: self.source,
            columns: self.data.clone(),
            ingested_at: self.ingested_at,
        };
        let (rows, output) = typed.write(ctx, read).await;
        let rows = rows.map_err(failed)?;
        let metrics = TaskMetrics {
            rows_read: rows,
            rows_written: rows,
            ..Default::default()
        };
        tracing::info!(source = self.source, slice = %slice.describe, rows, "database rows read");
        output.map(|o| Output { metrics, ..o })
    }
}

/// One task's range of a Kafka source's partition: the records' fields (as JSON lines are
/// read) and the Kafka columns, written as they are fetched.
async fn stream_records(
    ctx: &TaskContext,
    source: &SourceSpec,
    kafka: &KafkaSource,
    range: &StreamRange,
    data: SchemaRef,
    ingested_at: DateTime<Utc>,
) -> Result<Output, TaskError> {
    let name = source.name.value.as_str();
    let failed = |e: KafkaError| TaskError::transient(format!("bronze.{}: {e}", ctx.table.name));
    let topic = Topic::connect(&ctx.pipeline, kafka, name)
        .await
        .map_err(failed)?;
    let options = ReadOptions::new(source);
    let span = (range.from_offset, range.to_offset);
    let read = async |tx: mpsc::Sender<RecordBatch>| {
        topic
            .read(range.partition, span, &data, &options, &tx)
            .await
    };
    let typed = TypedRows {
        source: name,
        columns: kafka::record_schema(&data),
        ingested_at,
    };
    let (read, output) = typed.write(ctx, read).await;
    let read = read.map_err(failed)?;
    tracing::info!(
        source = name,
        partition = range.partition,
        from = range.from_offset,
        to = range.to_offset,
        records = read.records,
        "topic records read"
    );
    let metrics = TaskMetrics {
        rows_read: read.records,
        rows_written: read.records,
        rows_rescued: read.rescued,
        rows_malformed: read.malformed,
        bytes_read: read.bytes,
        ..Default::default()
    };
    output.map(|o| Output { metrics, ..o })
}

/// Rows a source sends typed (a database's, a topic's), written with the run's metadata
/// after their columns: `_ingested_at`, `_source_name`, `_ingestion_date`.
struct TypedRows<'a> {
    source: &'a str,
    columns: SchemaRef,
    ingested_at: DateTime<Utc>,
}

impl TypedRows<'_> {
    /// Writes what `read` sends as it comes, a few batches at a time; what `read` returned,
    /// and the files written.
    async fn write<T>(
        &self,
        ctx: &TaskContext,
        read: impl AsyncFnOnce(mpsc::Sender<RecordBatch>) -> T,
    ) -> (T, Result<Output, TaskError>) {
        let schema = typed_schema(&self.columns);
        let (tx, rx) = mpsc::channel::<RecordBatch>(4);
        let batches = ReceiverStream::new(rx).map(|b| self.with_metadata(&schema, b));
        let writing = ctx.write_files(
            &ctx.output_uri,
            schema.clone(),
            &ctx.partition_columns,
            batches,
        );
        // The sender moves into `read`: its end ends the batches.
        let (read, written) = tokio::join!(read(tx), writing);
        let output = written
            .map(|w| Output::new(w, schema, TaskMetrics::default()))
            .map_err(transient);
        (read, output)
    }

    fn with_metadata(&self, schema: &SchemaRef, batch: RecordBatch) -> anyhow::Result<RecordBatch> {
        let n = batch.num_rows();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![self.ingested_at.timestamp_micros(); n])
                .with_timezone("UTC"),
        ));
        columns.push(Arc::new(StringArray::from(vec![self.source; n])));
        let days = ingestion_days(self.ingested_at);
        columns.push(Arc::new(Date32Array::from(vec![days; n])));
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}
