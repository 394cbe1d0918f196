//! A Parquet source file into a table's data file without decoding its values: the source's
//! encoded column chunks are copied as they are, and the columns every row shares (bronze's
//! ingestion metadata) are encoded after them.
//!
//! Decoding a file's values and encoding them again is most of what landing a Parquet file in
//! bronze costs (TPC-H's `lineitem`: ~60% of its CPU time went to encoding, compressing and
//! computing statistics of values that were already encoded, compressed and summarised).
//! A copy keeps the source's encodings, compression and row groups, so it applies only where
//! the data file reads back as the table's rows: see [`ChunkCopy::plan`].
//!
//! ```no_run
//! # async fn example(source: std::fs::File, table: &datafusion::arrow::datatypes::Schema,
//! #     data_columns: usize, constants: Vec<datafusion::common::ScalarValue>)
//! #     -> anyhow::Result<()> {
//! use medallion_lake::copy::ChunkCopy;
//! let opts = medallion_lake::StorageOptions::new();
//! if let Some(copy) = ChunkCopy::plan(&source, table, data_columns)? {
//!     let add = copy
//!         .write("/lake/bronze/orders", "dispatch-1", &opts, &constants, &["_ingestion_date".into()])
//!         .await?;
//!     // `add` is the file's uncommitted Delta action, statistics included.
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate};
use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use deltalake::kernel::Add;
use deltalake::parquet::arrow::arrow_reader::statistics::StatisticsConverter;
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use deltalake::parquet::arrow::arrow_writer::{ArrowRowGroupWriterFactory, compute_leaves};
use deltalake::parquet::arrow::{ArrowSchemaConverter, add_encoded_arrow_schema_to_metadata};
use deltalake::parquet::basic::Repetition;
use deltalake::parquet::column::writer::ColumnCloseResult;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use deltalake::parquet::file::page_index::column_index::ColumnIndexMetaData;
use deltalake::parquet::file::page_index::offset_index::OffsetIndexMetaData;
use deltalake::parquet::file::properties::EnabledStatistics;
use deltalake::parquet::file::writer::SerializedFileWriter;
use deltalake::parquet::schema::types::{Type, TypePtr};
use deltalake::protocol::{ColumnCountStat, ColumnValueStat, Stats};
use serde_json::Value;

use datafusion::object_store::{ObjectStoreExt, WriteMultipart};

use crate::{StorageOptions, table_handle, writer_properties};

/// Rows encoded at a time for a constant column.
const CONSTANT_ROWS: usize = 8192;

/// Columns the Delta log keeps statistics for (`delta.dataSkippingNumIndexedCols`' default).
const INDEXED_COLUMNS: usize = 32;

/// How one source file becomes one data file: which source column chunk each data column is.
pub struct ChunkCopy {
    source: File,
    metadata: Arc<ParquetMetaData>,
    /// For each of the table's data columns, the index of its column chunk in the source.
    columns: Vec<usize>,
    /// The data file's schema: the source's types for the data columns, then the rest of
    /// the table's columns.
    parquet: TypePtr,
    arrow: SchemaRef,
    data_columns: usize,
}

impl ChunkCopy {
    /// A copy of `source` into a table whose columns are `table` (without its partition
    /// columns), the first `data_columns` of them the source's; `None` when the copy would
    /// not read back as the table's rows. That takes a source whose columns are flat, are
    /// exactly the table's data columns (by name, in any order) and have the table's Arrow
    /// types; anything else (a column missing, added or of another type, which bronze fills
    /// with nulls, rescues or casts) is not copied.
    pub fn plan(source: &File, table: &Schema, data_columns: usize) -> Result<Option<Self>> {
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let reader =
            ParquetRecordBatchReaderBuilder::try_new_with_options(source.try_clone()?, options)?;
        let metadata = reader.metadata().clone();
        let read_as = reader.schema();
        let descr = metadata.file_metadata().schema_descr();
        let fields = descr.root_schema().get_fields();
        let flat = fields
            .iter()
            .all(|f| f.is_primitive() && f.get_basic_info().repetition() != Repetition::REPEATED);
        if !flat || fields.len() != data_columns || read_as.fields().len() != data_columns {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(data_columns);
        let mut file_fields: Vec<FieldRef> = Vec::with_capacity(table.fields().len());
        for field in &table.fields()[..data_columns] {
            let Some((i, found)) = read_as.column_with_name(field.name()) else {
                return Ok(None);
            };
            if found.data_type() != field.data_type() {
                return Ok(None);
            }
            columns.push(i);
            // A required source column stays required in the copy: its pages carry no nulls.
            file_fields.push(Arc::new(found.as_ref().clone()));
        }
        let added = Schema::new(table.fields()[data_columns..].to_vec());
        let added_types = ArrowSchemaConverter::new().convert(&added)?;
        let mut parquet: Vec<TypePtr> = columns.iter().map(|&i| fields[i].clone()).collect();
        parquet.extend(added_types.root_schema().get_fields().iter().cloned());
        file_fields.extend(added.fields().iter().cloned());
        let parquet = Type::group_type_builder("arrow_schema")
            .with_fields(parquet)
            .build()?;
        Ok(Some(Self {
            source: source.try_clone()?,
            metadata,
            columns,
            parquet: Arc::new(parquet),
            arrow: Arc::new(Schema::new(file_fields)),
            data_columns,
        }))
    }

    /// Rows in the source.
    pub fn rows(&self) -> u64 {
        self.metadata.file_metadata().num_rows() as u64
    }

    /// Writes the data file under `uri`/`subdir`, uncommitted: the source's column chunks,
    /// then `constants` (one value for each of the table's other columns, partition columns
    /// last) in every row. Returns its Delta `Add`, with a path relative to `uri`.
    pub async fn write(
        &self,
        uri: &str,
        subdir: &str,
        opts: &StorageOptions,
        constants: &[ScalarValue],
        partition_columns: &[String],
    ) -> Result<Add> {
        let stored = self.arrow.fields().len() - self.data_columns;
        if constants.len() != stored + partition_columns.len() {
            bail!(
                "{} constant values for {stored} columns and {} partition columns",
                constants.len(),
                partition_columns.len()
            );
        }
        // The file is built on disk, not in memory: a source file can be larger than the
        // memory a task may use.
        let mut file = tempfile::tempfile().context("a temporary file for the copy")?;
        let metadata = self.encode(&constants[..stored], &mut file)?;
        let mut partition_values = HashMap::new();
        let mut dir = String::new();
        for (name, value) in partition_columns.iter().zip(&constants[stored..]) {
            let text = partition_text(value)?;
            dir.push_str(&format!("{name}={}/", url_encoded(text.as_deref())));
            partition_values.insert(name.clone(), text);
        }
        let path = format!("{subdir}/{dir}part-{}.snappy.parquet", uuid::Uuid::new_v4());
        let size = upload(uri, opts, &path, file)
            .await
            .with_context(|| format!("writing data file {path}"))?;
        let stats = stats(&metadata, &self.arrow)?;
        Ok(Add {
            path,
            size: size as i64,
            partition_values,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(serde_json::to_string(&stats)?),
            ..Default::default()
        })
    }

    /// The source's page index of each copied chunk (`None`: the source has none for some):
    /// a file's columns have offset indexes all or none.
    fn page_indexes(&self) -> Option<Vec<Vec<(ColumnIndexMetaData, OffsetIndexMetaData)>>> {
        let (columns, offsets) = (self.metadata.column_index(), self.metadata.offset_index()?);
        let groups = self.metadata.row_groups().iter().enumerate();
        groups
            .map(|(g, _)| {
                let chunks = self.columns.iter().map(|&i| {
                    let offset = offsets.get(g)?.get(i)?.clone();
                    let column = columns
                        .and_then(|c| c.get(g)?.get(i).cloned())
                        .unwrap_or(ColumnIndexMetaData::NONE);
                    Some((column, offset))
                });
                chunks.collect::<Option<Vec<_>>>()
            })
            .collect()
    }

    /// Writes the data file into `out`: each source row group's chunks, then the constant
    /// columns.
    fn encode(&self, constants: &[ScalarValue], out: &mut File) -> Result<ParquetMetaData> {
        let indexes = self.page_indexes();
        let mut props = match indexes {
            Some(_) => writer_properties(),
            // Without the source's offset index none can be written for the others.
            None => writer_properties()
                .into_builder()
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_offset_index_disabled(true)
                .build(),
        };
        add_encoded_arrow_schema_to_metadata(&self.arrow, &mut props);
        let mut writer = SerializedFileWriter::new(out, self.parquet.clone(), props.into())?;
        let factory = ArrowRowGroupWriterFactory::new(&writer, self.arrow.clone());
        let added = &self.arrow.fields()[self.data_columns..];
        for (index, group) in self.metadata.row_groups().iter().enumerate() {
            let rows = group.num_rows() as usize;
            let mut row_group = writer.next_row_group()?;
            for (c, &i) in self.columns.iter().enumerate() {
                let chunk = group.column(i);
                let (column_index, offset_index) = match &indexes {
                    Some(indexes) => {
                        let (column, offset) = indexes[index][c].clone();
                        let column =
                            (!matches!(column, ColumnIndexMetaData::NONE)).then_some(column);
                        (column, Some(offset))
                    }
                    None => (None, None),
                };
                let close = ColumnCloseResult {
                    bytes_written: chunk.compressed_size() as u64,
                    rows_written: rows as u64,
                    metadata: chunk.clone(),
                    bloom_filter: None,
                    column_index,
                    offset_index,
                };
                row_group.append_column(&self.source, close)?;
            }
            let writers = factory.create_column_writers(index)?;
            for ((mut column, field), value) in writers
                .into_iter()
                .skip(self.data_columns)
                .zip(added)
                .zip(constants)
            {
                let block = value.to_array_of_size(rows.min(CONSTANT_ROWS))?;
                let mut done = 0;
                while done < rows {
                    let n = (rows - done).min(CONSTANT_ROWS);
                    for leaf in compute_leaves(field, &block.slice(0, n))? {
                        column.write(&leaf)?;
                    }
                    done += n;
                }
                column.close()?.append_to_row_group(&mut row_group)?;
            }
            row_group.close()?;
        }
        Ok(writer.close()?)
    }
}

/// Puts `file` at `path` under the table `uri`, a part at a time; its size.
async fn upload(uri: &str, opts: &StorageOptions, path: &str, mut file: File) -> Result<u64> {
    use std::io::{Read, Seek};
    const PART: usize = 8 << 20;
    file.rewind()?;
    let store = table_handle(uri, opts)?.log_store().object_store(None);
    let upload = store.put_multipart(&deltalake::Path::from(path)).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut part = vec![0; PART];
    let mut size = 0;
    loop {
        let n = file.read(&mut part)?;
        if n == 0 {
            break;
        }
        writer.wait_for_capacity(2).await?;
        writer.write(&part[..n]);
        size += n as u64;
    }
    writer.finish().await?;
    Ok(size)
}

/// A partition value as the Delta log writes it (`None` for null).
fn partition_text(value: &ScalarValue) -> Result<Option<String>> {
    if value.is_null() {
        return Ok(None);
    }
    Ok(Some(match value {
        ScalarValue::Date32(Some(days)) => date(*days)?,
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s.clone(),
        other => other.to_string(),
    }))
}

/// A partition directory's name for a value. Readers take partition values from the log,
/// not from paths, so this only has to be a safe, readable path segment: every byte but
/// letters, digits, `-`, `_` and `.` is percent-encoded.
fn url_encoded(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "__HIVE_DEFAULT_PARTITION__".into();
    };
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn date(days: i32) -> Result<String> {
    let date = NaiveDate::from_epoch_days(days).context("date out of range")?;
    Ok(date.format("%Y-%m-%d").to_string())
}

/// The Delta statistics of a data file from its Parquet metadata, as the Delta writer of
/// `deltalake` records them: the row count, and for each of the first 32 columns its null
/// count and, where every row group with values has them, its least and greatest value.
fn stats(metadata: &ParquetMetaData, arrow: &Schema) -> Result<Stats> {
    let descr = metadata.file_metadata().schema_descr();
    let groups = metadata.row_groups();
    let mut stats = Stats {
        num_records: metadata.file_metadata().num_rows(),
        ..Default::default()
    };
    for field in arrow.fields().iter().take(INDEXED_COLUMNS) {
        let converter = StatisticsConverter::try_new(field.name(), arrow, descr)?;
        let nulls = converter.row_group_null_counts(groups.iter())?;
        if nulls.null_count() > 0 {
            continue;
        }
        let name = field.name().clone();
        let null_count: u64 = nulls.values().iter().sum();
        stats
            .null_count
            .insert(name.clone(), ColumnCountStat::Value(null_count as i64));
        let mins = converter.row_group_mins(groups.iter())?;
        let maxes = converter.row_group_maxes(groups.iter())?;
        // A row group with values but no bounds leaves the file without bounds.
        let unbounded = groups.iter().enumerate().any(|(i, g)| {
            (mins.is_null(i) || maxes.is_null(i)) && nulls.value(i) != g.num_rows() as u64
        });
        if unbounded {
            continue;
        }
        let least = aggregate(MinAccumulator::try_new(field.data_type())?, &mins)?;
        let greatest = aggregate(MaxAccumulator::try_new(field.data_type())?, &maxes)?;
        if let (Some(least), Some(greatest)) = (json(&least)?, json(&greatest)?) {
            stats
                .min_values
                .insert(name.clone(), ColumnValueStat::Value(least));
            stats
                .max_values
                .insert(name, ColumnValueStat::Value(greatest));
        }
    }
    Ok(stats)
}

fn aggregate(mut accumulator: impl Accumulator, values: &ArrayRef) -> Result<ScalarValue> {
    accumulator.update_batch(std::slice::from_ref(values))?;
    Ok(accumulator.evaluate()?)
}

/// A bound as `deltalake`'s writer puts it in the log: numbers as numbers (decimals too),
/// dates as `YYYY-MM-DD`, timestamps to the millisecond; `None` for a null and for types it
/// keeps no bounds of (binary, nested).
fn json(value: &ScalarValue) -> Result<Option<Value>> {
    use ScalarValue as S;
    let timestamp = |v: i64, unit: TimeUnit, utc: bool| -> Result<Value> {
        let at = match unit {
            TimeUnit::Second => DateTime::from_timestamp(v, 0),
            TimeUnit::Millisecond => DateTime::from_timestamp_millis(v),
            TimeUnit::Microsecond => DateTime::from_timestamp_micros(v),
            TimeUnit::Nanosecond => Some(DateTime::from_timestamp_nanos(v)),
        }
        .context("timestamp out of range")?;
        let whole = chrono::Timelike::nanosecond(&at) == 0;
        let format = match (utc, whole) {
            (true, true) => "%Y-%m-%dT%H:%M:%SZ",
            (true, false) => "%Y-%m-%dT%H:%M:%S%.3fZ",
            (false, true) => "%Y-%m-%d %H:%M:%S",
            (false, false) => "%Y-%m-%d %H:%M:%S%.3f",
        };
        Ok(Value::from(at.naive_utc().format(format).to_string()))
    };
    Ok(Some(match value {
        v if v.is_null() => return Ok(None),
        S::Boolean(Some(b)) => Value::from(*b),
        S::Int8(Some(v)) => Value::from(*v),
        S::Int16(Some(v)) => Value::from(*v),
        S::Int32(Some(v)) => Value::from(*v),
        S::Int64(Some(v)) => Value::from(*v),
        S::UInt8(Some(v)) => Value::from(*v),
        S::UInt16(Some(v)) => Value::from(*v),
        S::UInt32(Some(v)) => Value::from(*v),
        S::UInt64(Some(v)) => Value::from(*v),
        S::Float32(Some(v)) => Value::from(*v),
        S::Float64(Some(v)) => Value::from(*v),
        S::Utf8(Some(s)) | S::LargeUtf8(Some(s)) | S::Utf8View(Some(s)) => Value::from(s.clone()),
        S::Date32(Some(days)) => Value::from(date(*days)?),
        S::Decimal128(Some(v), _, 0) => Value::from(*v as i64),
        S::Decimal128(Some(v), _, scale) => Value::from(*v as f64 / 10f64.powi(*scale as i32)),
        S::TimestampSecond(Some(v), tz) => timestamp(*v, TimeUnit::Second, tz.is_some())?,
        S::TimestampMillisecond(Some(v), tz) => timestamp(*v, TimeUnit::Millisecond, tz.is_some())?,
        S::TimestampMicrosecond(Some(v), tz) => timestamp(*v, TimeUnit::Microsecond, tz.is_some())?,
        S::TimestampNanosecond(Some(v), tz) => timestamp(*v, TimeUnit::Nanosecond, tz.is_some())?,
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        Date32Array, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
        TimestampMicrosecondArray,
    };
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::arrow::record_batch::RecordBatchReader;
    use deltalake::parquet::arrow::ArrowWriter;
    use deltalake::parquet::file::properties::WriterProperties;

    const DAY: i32 = 20_000;
    const AT: i64 = 1_764_806_400_123_456;

    /// A source file of two row groups: a required key, nullable values of the types bronze
    /// keeps bounds of; with or without a page index.
    fn source(dir: &std::path::Path, page_index: bool) -> (File, RecordBatch) {
        let n = 3000;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("qty", DataType::Int32, true),
            Field::new("price", DataType::Decimal128(15, 2), true),
            Field::new("name", DataType::Utf8, true),
            Field::new("day", DataType::Date32, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values((0..n).map(|i| 7 * i - 100))),
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| (i % 5 != 0).then_some(i as i32 % 97)),
            )),
            Arc::new(
                Decimal128Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(i as i128 * 13)))
                    .with_precision_and_scale(15, 2)
                    .unwrap(),
            ),
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| (i % 3 != 0).then(|| format!("name {}", i % 211))),
            )),
            Arc::new(Date32Array::from_iter_values(
                (0..n).map(|i| DAY - i as i32),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(|i| AT + i * 1_000_017))
                    .with_timezone("UTC"),
            ),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let path = dir.join("source.parquet");
        let mut props = WriterProperties::builder().set_max_row_group_row_count(Some(2000));
        if !page_index {
            props = props
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .set_offset_index_disabled(true);
        }
        let props = props.build();
        let mut writer =
            ArrowWriter::try_new(File::create(&path).unwrap(), schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        (File::open(&path).unwrap(), batch)
    }

    /// The table's columns: the source's (nullable, as bronze has them), then the metadata;
    /// `_ingestion_date` is its partition column.
    fn table(data: &Schema) -> Schema {
        let mut fields: Vec<Field> = data
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        fields.extend([
            Field::new("_rescued_data", DataType::Utf8, true),
            Field::new(
                "_ingested_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("_source_file", DataType::Utf8, false),
            Field::new("_ingestion_date", DataType::Date32, false),
        ]);
        Schema::new(fields)
    }

    fn constants() -> Vec<ScalarValue> {
        vec![
            ScalarValue::Utf8(None),
            ScalarValue::TimestampMicrosecond(Some(AT), Some("UTC".into())),
            ScalarValue::Utf8(Some("orders/a.parquet".into())),
            ScalarValue::Date32(Some(DAY)),
        ]
    }

    fn stored(table: &Schema) -> Schema {
        Schema::new(table.fields()[..table.fields().len() - 1].to_vec())
    }

    fn parsed(add: &Add) -> Value {
        serde_json::from_str(add.stats.as_deref().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_copied_file_reads_back_as_the_decoded_rows_with_the_delta_writers_statistics() {
        for page_index in [true, false] {
            copied_and_read_back(page_index).await;
        }
    }

    async fn copied_and_read_back(page_index: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (file, batch) = source(dir.path(), page_index);
        let table = table(&batch.schema());
        let copy = ChunkCopy::plan(&file, &stored(&table), 6).unwrap().unwrap();
        assert_eq!(copy.rows(), 3000);
        let uri = dir.path().join("copied").display().to_string();
        let partition = ["_ingestion_date".to_string()];
        let add = copy
            .write(&uri, "d1", &Default::default(), &constants(), &partition)
            .await
            .unwrap();
        assert!(add.path.starts_with("d1/_ingestion_date=2024-10-04/part-"));
        assert_eq!(
            add.partition_values,
            HashMap::from([("_ingestion_date".into(), Some("2024-10-04".into()))])
        );

        // What the Delta writer makes of the same rows, decoded.
        let n = batch.num_rows();
        let mut columns = batch.columns().to_vec();
        for value in constants() {
            columns.push(value.to_array_of_size(n).unwrap());
        }
        let rows = RecordBatch::try_new(Arc::new(table.clone()), columns).unwrap();
        let other = dir.path().join("written").display().to_string();
        let written = crate::write_data_files(
            &other,
            "d1",
            &Default::default(),
            Arc::new(table.clone()),
            &partition,
            futures::stream::iter([Ok(rows.clone())]),
        )
        .await
        .unwrap();
        assert_eq!(parsed(&add), parsed(&written.adds[0]));
        assert_eq!(parsed(&add)["nullCount"]["qty"], 600);
        assert_eq!(parsed(&add)["minValues"]["at"], "2025-12-04T00:00:00.123Z");

        let read = File::open(dir.path().join("copied").join(&add.path)).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(read).unwrap();
        assert_eq!(
            reader.metadata().num_row_groups(),
            2,
            "the source's row groups"
        );
        assert_eq!(
            add.size,
            std::fs::metadata(dir.path().join("copied").join(&add.path))
                .unwrap()
                .len() as i64
        );
        let reader = reader.build().unwrap();
        let schema = reader.schema();
        let back: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        let back = concat_batches(&schema, &back).unwrap();
        assert_eq!(back.num_rows(), n);
        assert!(
            !schema.field(0).is_nullable(),
            "a required column stays required"
        );
        let expected = rows.project(&(0..table.fields().len() - 1).collect::<Vec<_>>());
        for (i, column) in expected.unwrap().columns().iter().enumerate() {
            assert_eq!(
                &back.column(i).to_data(),
                &column.to_data(),
                "{}",
                table.field(i)
            );
        }
    }

    #[test]
    fn a_file_whose_columns_are_not_the_tables_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (file, batch) = source(dir.path(), true);
        let data = batch.schema();
        let other_type = Schema::new(
            data.fields()
                .iter()
                .map(|f| match f.name().as_str() {
                    "qty" => Arc::new(Field::new("qty", DataType::Int64, true)),
                    _ => f.clone(),
                })
                .collect::<Vec<_>>(),
        );
        let fewer = Schema::new(data.fields()[..5].to_vec());
        let more = Schema::new(
            data.fields()
                .iter()
                .cloned()
                .chain([Arc::new(Field::new("extra", DataType::Utf8, true))])
                .collect::<Vec<_>>(),
        );
        let renamed = Schema::new(
            data.fields()
                .iter()
                .map(|f| Arc::new(f.as_ref().clone().with_name(format!("{}_", f.name()))))
                .collect::<Vec<_>>(),
        );
        for (why, data) in [
            ("a column of another type", other_type),
            ("a source column the table lacks", fewer),
            ("a table column the source lacks", more),
            ("other names", renamed),
        ] {
            let n = data.fields().len();
            let plan = ChunkCopy::plan(&file, &stored(&table(&data)), n).unwrap();
            assert!(plan.is_none(), "{why}");
        }
        // The same columns in another order are copied, in the table's order.
        let reversed = Schema::new(data.fields().iter().rev().cloned().collect::<Vec<_>>());
        let plan = ChunkCopy::plan(&file, &stored(&table(&reversed)), 6).unwrap();
        assert_eq!(plan.unwrap().columns, vec![5, 4, 3, 2, 1, 0]);
    }
}
