//! Delta Lake access shared by the coordinator and the executors.
//!
//! Executors only ever write *uncommitted* data files ([`write_data_files`]); the coordinator
//! commits them. [`StagedFiles`] reads such uncommitted files back, so quality checks and merges
//! can look at a table's next version before it exists.

mod append;
pub mod ballista;
pub mod changes;
pub mod checkpoint;
pub mod copy;
pub mod history;
pub mod objects;
pub mod optimize;
pub mod ranges;
pub mod restore;
pub mod runtime;
pub mod unique;
pub mod vacuum;

pub use append::append;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::{TryIntoArrow, TryIntoKernel};
use deltalake::kernel::{Add, StructType};
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::{Stream, StreamExt};
use url::Url;

/// Storage options as deltalake takes them.
pub type StorageOptions = HashMap<String, String>;

/// Parses a table location: a URL, or a local path (made absolute).
pub fn table_url(uri: &str) -> Result<Url> {
    if uri.contains("://") {
        Url::parse(uri).with_context(|| format!("invalid table URL '{uri}'"))
    } else {
        let abs = std::path::absolute(uri).with_context(|| format!("invalid path '{uri}'"))?;
        Url::from_directory_path(&abs).map_err(|()| anyhow::anyhow!("invalid table path '{uri}'"))
    }
}

/// The directory of a location on the local file system; `None` for object storage.
pub fn local_dir(uri: &str) -> Option<std::path::PathBuf> {
    let url = table_url(uri).ok()?;
    (url.scheme() == "file")
        .then(|| url.to_file_path().ok())
        .flatten()
}

/// A table handle that may not have a Delta log yet.
pub fn table_handle(uri: &str, opts: &StorageOptions) -> Result<DeltaTable> {
    Ok(DeltaTableBuilder::from_url(table_url(uri)?)?
        .with_storage_options(opts.clone())
        .build()?)
}

/// Opens a table at its latest version; `None` when nothing was ever committed there.
pub async fn open_table(uri: &str, opts: &StorageOptions) -> Result<Option<DeltaTable>> {
    if local_dir(uri).is_some_and(|dir| !dir.join("_delta_log").is_dir()) {
        return Ok(None);
    }
    let mut table = table_handle(uri, opts)?;
    match table.load().await {
        Ok(()) => Ok(Some(table)),
        Err(deltalake::DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot open Delta table {uri}")),
    }
}

/// A table's latest version and when it was committed (its `commitInfo` timestamp, ms since
/// the epoch); `None` when nothing was ever committed there. Reads one log entry, not the
/// table's snapshot, so it stays cheap for large tables.
pub async fn last_commit(uri: &str, opts: &StorageOptions) -> Result<Option<(u64, i64)>> {
    if local_dir(uri).is_some_and(|dir| !dir.join("_delta_log").is_dir()) {
        return Ok(None);
    }
    let store = table_handle(uri, opts)?.log_store();
    let version = match store.get_latest_version(0).await {
        Ok(v) => v,
        // No first commit yet.
        Err(deltalake::DeltaTableError::InvalidVersion(0)) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot list the Delta log of {uri}")),
    };
    let entry = store.read_commit_entry(version).await?;
    let timestamp = entry.as_deref().and_then(|bytes| {
        bytes
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .find_map(|action| action["commitInfo"]["timestamp"].as_i64())
    });
    Ok(Some((version, timestamp.unwrap_or(0))))
}

/// A batch of named columns, each with whether it may hold nulls: the rows our own
/// bookkeeping tables (check results, run history) append.
pub fn batch_of(
    columns: Vec<(&str, datafusion::arrow::array::ArrayRef, bool)>,
) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
        .collect();
    let arrays = columns.into_iter().map(|(_, array, _)| array).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Opens a table at a given version.
pub async fn open_version(uri: &str, opts: &StorageOptions, version: u64) -> Result<DeltaTable> {
    let mut table = table_handle(uri, opts)?;
    table
        .load_version(version)
        .await
        .with_context(|| format!("cannot open Delta table {uri} at version {version}"))?;
    Ok(table)
}

/// What Medallion recorded in the commit info of `version` about how it was computed (the
/// `medallion.*` keys but the run id): what a commit that changes no rows (a restore, a
/// compaction, a vacuum) carries on, so the planner sees the table computed as before.
pub async fn recorded_info(
    table: &DeltaTable,
    version: u64,
) -> Result<Vec<(String, serde_json::Value)>> {
    let bytes = table
        .log_store()
        .read_commit_entry(version)
        .await?
        .with_context(|| format!("version {version} is no longer in the table's log"))?;
    let info = deltalake::logstore::get_actions(version, &bytes)?
        .into_iter()
        .find_map(|a| match a {
            deltalake::kernel::Action::CommitInfo(info) => Some(info.info),
            _ => None,
        })
        .unwrap_or_default();
    Ok(info
        .into_iter()
        .filter(|(k, _)| k.starts_with("medallion.") && k != "medallion.run_id")
        .collect())
}

/// The bytes of data files in one version of a table.
pub async fn table_bytes(uri: &str, opts: &StorageOptions, version: u64) -> Result<u64> {
    data_bytes(&open_version(uri, opts, version).await?)
}

/// The bytes of data files in the loaded version of `table`.
pub fn data_bytes(table: &DeltaTable) -> Result<u64> {
    Ok(table
        .snapshot()?
        .log_data()
        .into_iter()
        .map(|f| f.size().max(0) as u64)
        .sum())
}

/// Runs `sql` over the Delta table at `uri`, registered as `name` (a bookkeeping table such
/// as the run history); `None` when nothing was ever committed there.
pub async fn query_table(
    uri: &str,
    opts: &StorageOptions,
    name: &str,
    sql: &str,
) -> Result<Option<Vec<RecordBatch>>> {
    let Some(table) = open_table(uri, opts).await? else {
        return Ok(None);
    };
    let ctx = SessionContext::new();
    register_delta(&ctx, name, &table).await?;
    let batches = ctx
        .sql(sql)
        .await?
        .collect()
        .await
        .with_context(|| format!("reading {uri}"))?;
    Ok(Some(batches))
}

/// Registers a Delta table with a DataFusion session under `name`, together with the object
/// store it lives in (the provider alone does not register the store).
pub async fn register_delta(
    ctx: &SessionContext,
    name: impl Into<datafusion::common::TableReference>,
    table: &DeltaTable,
) -> Result<()> {
    register_delta_unique_on(ctx, name, table, &[]).await
}

/// [`register_delta`] for a table no two rows of share the values of `key`'s columns (none:
/// not known), declared to DataFusion ([`unique::UniqueOn`]).
pub async fn register_delta_unique_on(
    ctx: &SessionContext,
    name: impl Into<datafusion::common::TableReference>,
    table: &DeltaTable,
    key: &[&str],
) -> Result<()> {
    table.update_datafusion_session(&ctx.state())?;
    let provider = table.table_provider().await?;
    let provider = match key {
        [] => provider,
        key => unique::UniqueOn::table(provider, key)?,
    };
    ctx.register_table(name, provider)?;
    Ok(())
}

/// The Arrow schema of a Delta schema.
pub fn arrow_schema(schema: &StructType) -> Result<SchemaRef> {
    let s: Schema = schema.try_into_arrow()?;
    Ok(Arc::new(s))
}

/// The Delta schema of an Arrow schema.
pub fn delta_struct(schema: &Schema) -> Result<StructType> {
    Ok(schema.try_into_kernel()?)
}

/// The Delta schema of an Arrow schema, as the JSON that travels in tasks.
pub fn schema_to_json(schema: &Schema) -> Result<String> {
    Ok(serde_json::to_string(&delta_struct(schema)?)?)
}

/// The Arrow schema of a Delta schema's JSON, as tasks carry it.
pub fn schema_from_json(json: &str) -> Result<SchemaRef> {
    let schema: StructType = serde_json::from_str(json).context("invalid Delta schema JSON")?;
    arrow_schema(&schema)
}

/// Files written for one table and not committed yet, with the schema of their rows: what a
/// task hands the coordinator, for the table and for its quarantine table.
#[derive(Debug, Clone)]
pub struct TableFiles {
    /// Paths relative to the table's location.
    pub adds: Vec<Add>,
    pub schema: SchemaRef,
}

/// Files [`write_data_files`] wrote, and the time it spent encoding and writing them (the
/// rest of a task's time went to reading and computing the rows).
#[derive(Debug, Default)]
pub struct Written {
    pub adds: Vec<Add>,
    pub write_time: std::time::Duration,
}

/// Writes batches as Parquet data files under `uri`/`subdir` without committing them.
///
/// Returns one Delta `Add` per file, with paths relative to `uri` (so starting with
/// `subdir/`). Nothing is visible to readers until the coordinator commits these actions; if
/// it never does, [`delete_dir`] removes the whole `subdir`.
pub async fn write_data_files(
    uri: &str,
    subdir: &str,
    opts: &StorageOptions,
    schema: SchemaRef,
    partition_columns: &[String],
    mut batches: impl Stream<Item = Result<RecordBatch>> + Unpin,
) -> Result<Written> {
    let url = child_url(uri, subdir)?;
    let mut writer = RecordBatchWriter::try_new(
        url.as_str(),
        schema,
        (!partition_columns.is_empty()).then(|| partition_columns.to_vec()),
        Some(opts.clone()),
    )?
    .with_writer_properties(writer_properties())
    .with_target_file_size(TARGET_FILE_SIZE);
    let mut write_time = std::time::Duration::ZERO;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        if batch.num_rows() > 0 {
            let started = std::time::Instant::now();
            writer.write(batch).await.context("writing data files")?;
            write_time += started.elapsed();
        }
    }
    let started = std::time::Instant::now();
    let mut adds = writer.flush().await?;
    write_time += started.elapsed();
    for add in &mut adds {
        add.path = format!("{subdir}/{}", add.path);
    }
    Ok(Written { adds, write_time })
}

/// Where a data file ends and the next begins (encoded bytes). A merge rewrites whole files,
/// so a file is the unit of what a changed row costs: silver rows are written in key order
/// and cut into files of this size, so an update of recent keys rewrites the few files that
/// hold them. silver.orders of the e-commerce example is about 32 bytes a row (1M orders:
/// 32 MB, 4 files); readers see no difference between this and larger files at these sizes.
pub const TARGET_FILE_SIZE: u64 = 8 << 20;

/// How data files are encoded: Snappy, and dictionaries only for columns with few distinct
/// values. parquet's default dictionary page of 1 MiB makes every unique-ish column (ids, emails,
/// timestamps as text) intern tens of thousands of values per row group before it falls back
/// to plain encoding; a 64 KiB dictionary falls back after a few thousand, and still holds a
/// status, a category or a few thousand product ids. Measured on bronze.orders at 5M orders:
/// encoding time 9.7 -> 6.4 s of task time, files 7% smaller (bench/results/PROFILE.md).
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(64 << 10)
        .build()
}

/// The directory `subdir` under the location `uri`.
fn child_url(uri: &str, subdir: &str) -> Result<Url> {
    let base = table_url(uri)?;
    let url = format!("{}/{subdir}/", base.as_str().trim_end_matches('/'));
    Url::parse(&url).with_context(|| format!("invalid location '{url}'"))
}

/// Deletes everything under `uri`/`subdir`: the files of a task dispatch that will never be
/// committed. A directory that does not exist is fine.
pub async fn delete_dir(uri: &str, subdir: &str, opts: &StorageOptions) -> Result<()> {
    use datafusion::object_store::ObjectStoreExt;
    use futures::TryStreamExt;
    let store = table_handle(uri, opts)?.log_store().object_store(None);
    let prefix = deltalake::Path::from(subdir);
    let files: Vec<_> = match store.list(Some(&prefix)).try_collect::<Vec<_>>().await {
        Ok(files) => files,
        Err(deltalake::ObjectStoreError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for file in files {
        match store.delete(&file.location).await {
            Ok(()) | Err(deltalake::ObjectStoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // A local store leaves the emptied directories behind.
    if let Ok(dir) = child_url(uri, subdir)?.to_file_path() {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

/// Deletes `subdir` under each of `uris` (empty ones skipped): the files of one task
/// dispatch, in its table and its quarantine table.
pub async fn delete_dirs(uris: &[&str], subdir: &str, opts: &StorageOptions) -> Result<()> {
    for uri in uris.iter().filter(|u| !u.is_empty()) {
        delete_dir(uri, subdir, opts).await?;
    }
    Ok(())
}

/// Uncommitted data files (Delta `Add`s under a directory), read as one table.
///
/// Partition values come from the `Add` actions, as Delta does not store them in the files.
#[derive(Debug)]
pub struct StagedFiles {
    root: Url,
    /// Data columns, then partition columns.
    schema: SchemaRef,
    partition_columns: Vec<String>,
    files: Vec<Add>,
}

impl StagedFiles {
    /// The bytes of its data files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size.max(0) as u64).sum()
    }

    /// `schema` lists every column, partition columns included, in any order.
    pub fn new(
        uri: &str,
        schema: &Schema,
        partition_columns: &[String],
        files: Vec<Add>,
    ) -> Result<Self> {
        let (parts, data): (Vec<FieldRef>, Vec<FieldRef>) = schema
            .fields()
            .iter()
            .cloned()
            .partition(|f| partition_columns.contains(f.name()));
        let ordered = Schema::new(data.into_iter().chain(parts).collect::<Vec<_>>());
        Ok(Self {
            root: table_url(uri)?,
            schema: Arc::new(ordered),
            partition_columns: partition_columns.to_vec(),
            files,
        })
    }

    /// Registers the object store of the files' location with `ctx`.
    pub fn register_store(&self, ctx: &SessionContext, opts: &StorageOptions) -> Result<()> {
        if self.root.scheme() != "file" {
            let table = table_handle(self.root.as_str(), opts)?;
            let store = table.log_store().root_object_store(None);
            ctx.register_object_store(&self.store_url()?, store);
        }
        Ok(())
    }

    fn store_url(&self) -> Result<Url> {
        Ok(Url::parse(&format!(
            "{}://{}",
            self.root.scheme(),
            self.root.authority()
        ))?)
    }
}

#[async_trait]
impl TableProvider for StagedFiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let ext = |e: anyhow::Error| datafusion::error::DataFusionError::External(e.into());
        let n_data = self.schema.fields().len() - self.partition_columns.len();
        let data_schema = Arc::new(Schema::new(self.schema.fields()[..n_data].to_vec()));
        let part_fields: Vec<FieldRef> = self.schema.fields()[n_data..].to_vec();
        let root = deltalake::Path::from_url_path(self.root.path()).map_err(|e| ext(e.into()))?;
        let mut files = Vec::with_capacity(self.files.len());
        for add in &self.files {
            let rel = deltalake::Path::from_url_path(&add.path).map_err(|e| ext(e.into()))?;
            let location: deltalake::Path = root.parts().chain(rel.parts()).collect();
            let values = part_fields
                .iter()
                .map(
                    |f| match add.partition_values.get(f.name()).cloned().flatten() {
                        Some(s) => ScalarValue::try_from_string(s, f.data_type()),
                        None => ScalarValue::try_from(f.data_type()),
                    },
                )
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let meta = deltalake::ObjectMeta {
                location,
                size: add.size as u64,
                last_modified: Default::default(),
                e_tag: None,
                version: None,
            };
            files.push(PartitionedFile::new_from_meta(meta).with_partition_values(values));
        }
        let n = state.config().target_partitions().max(1);
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); n];
        for (i, f) in files.into_iter().enumerate() {
            groups[i % n].push(f);
        }
        let groups = groups
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(FileGroup::new)
            .collect();
        let table_schema = TableSchema::builder(data_schema)
            .with_table_partition_cols(part_fields)
            .build();
        let store = ObjectStoreUrl::parse(self.store_url().map_err(ext)?.as_str())?;
        let config = FileScanConfigBuilder::new(store, Arc::new(ParquetSource::new(table_schema)))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The type Delta stores for an Arrow type: Delta has no unsigned integers, no nanosecond or
/// zone-less timestamps, and no view or large string types.
pub fn delta_type(t: &DataType) -> DataType {
    use datafusion::arrow::datatypes::TimeUnit;
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Date64 => DataType::Date32,
        DataType::Dictionary(_, v) => delta_type(v),
        other => other.clone(),
    }
}

/// Whether every value of type `from` is a value of type `to` (Delta's safe type widening:
/// integers to wider integers or to double, float to double, decimals to more digits).
pub fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let rank = |t: &DataType| match t {
        Int8 => Some(1),
        Int16 => Some(2),
        Int32 => Some(3),
        Int64 => Some(4),
        _ => None,
    };
    match (from, to) {
        (Int8 | Int16 | Int32, Float64) | (Float32, Float64) => true,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && (*p2 as i16 - *s2 as i16) >= (*p1 as i16 - *s1 as i16) && from != to
        }
        _ => matches!((rank(from), rank(to)), (Some(a), Some(b)) if a < b),
    }
}

/// `schema` with every column type mapped by [`delta_type`].
pub fn delta_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(delta_type(f.data_type())))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Casts a batch to `schema` (same columns, Delta-compatible types).
pub fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| Ok(datafusion::arrow::compute::cast(c, f.data_type())?))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_dispatchs_directory_is_deleted_in_each_location_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            "t/r1-0-1/a.parquet",
            "t/r1-0-1/nested/b.parquet",
            "t/r1-0-12/c.parquet",
            "t/_delta_log/00000000000000000000.json",
            "t/day=1/d.parquet",
            "q/r1-0-1/e.parquet",
            "q/r1-1-1/f.parquet",
        ];
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let [t, q, missing] = ["t", "q", "nothing-here"].map(|d| dir.path().join(d));
        let uris = [t, q, missing].map(|u| u.to_str().unwrap().to_string());
        let uris: Vec<&str> = uris.iter().map(String::as_str).chain([""]).collect();
        super::delete_dirs(&uris, "r1-0-1", &Default::default())
            .await
            .unwrap();
        let kept = [false, false, true, true, true, false, true];
        for (f, kept) in files.iter().zip(kept) {
            assert_eq!(dir.path().join(f).exists(), kept, "{f}");
        }
        assert!(
            !dir.path().join("t/r1-0-1").exists(),
            "the emptied directory goes too"
        );
    }
}
