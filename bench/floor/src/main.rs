//! The floor of the e-commerce benchmark: what its bronze and silver stages cannot cost less
//! than on this machine, measured on the same files with the same number of threads.
//!
//! ```text
//! medallion-floor <data dir> <work dir> [--threads 2]
//! ```
//!
//! - **bronze**: read each raw `orders/*.jsonl` file's bytes, parse every line with sonic-rs (a
//!   SIMD JSON parser) straight into Arrow text columns, as bronze keeps them, plus bronze's
//!   metadata columns, and write them as Parquet encoded as Medallion encodes its data files.
//! - **silver**: read those Parquet files back, convert the text to silver's types (integers,
//!   decimal, timestamps, the order date) and write them as Parquet again.
//!
//! Nothing else: no schema inference, no quality checks, no dedupe, no Delta log. It prints one
//! JSON line with each stage's wall time and, per part (read, parse, write...), the time the
//! threads spent in it. `bench/harness.py` divides Medallion's stage times by these.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrow_array::builder::{ArrayBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sonic_rs::JsonValueTrait;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fields of an order, in the order the raw files' objects list them.
const FIELDS: [&str; 9] = [
    "amount",
    "created_at",
    "customer_id",
    "email",
    "order_id",
    "product_id",
    "quantity",
    "status",
    "updated_at",
];

/// Rows per Arrow batch handed to the Parquet writer.
const BATCH_ROWS: usize = 65_536;

/// Time spent in each part of a stage, summed over the threads.
#[derive(Default)]
struct Parts(Mutex<Vec<(&'static str, Duration)>>);

impl Parts {
    fn add(&self, part: &'static str, took: Duration) {
        let mut parts = self.0.lock().unwrap();
        match parts.iter_mut().find(|(name, _)| *name == part) {
            Some((_, total)) => *total += took,
            None => parts.push((part, took)),
        }
    }

    fn json(&self) -> String {
        let parts = self.0.lock().unwrap();
        let fields: Vec<String> = parts
            .iter()
            .map(|(name, took)| format!("\"{name}_s\": {:.3}", took.as_secs_f64()))
            .collect();
        format!("{{{}}}", fields.join(", "))
    }
}

/// Times `f` as `part`.
fn timed<T>(parts: &Parts, part: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    parts.add(part, started.elapsed());
    out
}

/// Runs `work` on every input on `threads` threads, each taking the next input when done.
fn on_threads(inputs: &[PathBuf], threads: usize, work: impl Fn(usize, &Path) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(input) = inputs.get(i) else { break };
                    work(i, input);
                }
            });
        }
    });
}

/// Medallion's encoding of data files (`medallion_lake::writer_properties`): Snappy, and
/// dictionary pages of at most 64 KiB.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(64 << 10)
        .build()
}

fn bronze_schema() -> SchemaRef {
    let mut fields: Vec<Field> = FIELDS
        .iter()
        .map(|name| Field::new(*name, DataType::Utf8, true))
        .collect();
    let utc = Some("UTC".into());
    fields.extend([
        Field::new("_rescued_data", DataType::Utf8, true),
        Field::new(
            "_ingested_at",
            DataType::Timestamp(TimeUnit::Microsecond, utc),
            false,
        ),
        Field::new("_source_file", DataType::Utf8, false),
        Field::new("_source_file_size", DataType::Int64, false),
        Field::new("_source_file_version", DataType::Utf8, false),
        Field::new("_source_name", DataType::Utf8, false),
        Field::new("_ingestion_date", DataType::Date32, false),
    ]);
    Arc::new(Schema::new(fields))
}

/// Bronze columns being built from one raw file.
struct BronzeBatch {
    columns: Vec<StringBuilder>,
    rescued: StringBuilder,
}

impl BronzeBatch {
    fn new() -> Self {
        Self {
            columns: FIELDS
                .iter()
                .map(|_| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 24))
                .collect(),
            rescued: StringBuilder::new(),
        }
    }

    fn len(&self) -> usize {
        self.rescued.len()
    }

    /// Adds one line: each field's text (strings unquoted, numbers as written) to its column;
    /// a line that is not a JSON object becomes a row of NULLs that keeps the line.
    fn push(&mut self, line: &str) {
        let mut values: [Option<&str>; FIELDS.len()] = [None; FIELDS.len()];
        let mut unescaped: Vec<(usize, String)> = Vec::new();
        let mut other: Vec<String> = Vec::new();
        let mut corrupt = false;
        for entry in sonic_rs::to_object_iter(line) {
            let Ok((key, value)) = entry else {
                corrupt = true;
                break;
            };
            let key: &str = &key;
            let Some(i) = FIELDS.iter().position(|f| *f == key) else {
                other.push(format!("\"{key}\":{}", value.as_raw_str()));
                continue;
            };
            let raw = value.as_raw_str();
            if value.is_null() {
                continue;
            } else if value.is_str() && !raw.contains('\\') {
                values[i] = Some(&line[offset(line, raw) + 1..offset(line, raw) + raw.len() - 1]);
            } else if value.is_str() {
                unescaped.push((i, value.as_str().unwrap_or_default().to_string()));
            } else {
                values[i] = Some(&line[offset(line, raw)..offset(line, raw) + raw.len()]);
            }
        }
        if corrupt {
            self.columns.iter_mut().for_each(|c| c.append_null());
            self.rescued.append_value(line);
            return;
        }
        for (i, text) in &unescaped {
            values[*i] = Some(text);
        }
        for (column, value) in self.columns.iter_mut().zip(values) {
            column.append_option(value);
        }
        if other.is_empty() {
            self.rescued.append_null();
        } else {
            self.rescued
                .append_value(format!("{{{}}}", other.join(",")));
        }
    }

    /// The batch with `file`'s metadata columns.
    fn finish(&mut self, schema: &SchemaRef, file: &FileMeta) -> RecordBatch {
        let rows = self.len();
        let mut columns: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| Arc::new(c.finish()) as ArrayRef)
            .collect();
        columns.push(Arc::new(self.rescued.finish()));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![file.ingested_us; rows]).with_timezone("UTC"),
        ));
        columns.push(Arc::new(StringArray::from(vec![file.name.as_str(); rows])));
        columns.push(Arc::new(Int64Array::from(vec![file.size; rows])));
        columns.push(Arc::new(StringArray::from(vec![
            file.version.as_str();
            rows
        ])));
        columns.push(Arc::new(StringArray::from(vec!["ecommerce_api"; rows])));
        columns.push(Arc::new(Date32Array::from(vec![file.ingestion_day; rows])));
        RecordBatch::try_new(schema.clone(), columns).expect("bronze columns match their schema")
    }
}

/// Where `part` (a slice of `whole`) starts in it.
fn offset(whole: &str, part: &str) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// What bronze records of the file a row came from.
struct FileMeta {
    name: String,
    size: i64,
    version: String,
    ingested_us: i64,
    ingestion_day: i32,
}

fn bronze_file(input: &Path, output: &Path, schema: &SchemaRef, parts: &Parts) -> usize {
    let bytes = timed(parts, "read", || fs::read(input).expect("read a raw file"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let file = FileMeta {
        name: input.file_name().unwrap().to_string_lossy().into_owned(),
        size: bytes.len() as i64,
        version: format!("{}", now.as_micros()),
        ingested_us: now.as_micros() as i64,
        ingestion_day: (now.as_secs() / 86_400) as i32,
    };
    let text = timed(parts, "parse", || {
        std::str::from_utf8(&bytes).expect("raw files are UTF-8")
    });
    let mut writer = ArrowWriter::try_new(
        File::create(output).expect("create a bronze file"),
        schema.clone(),
        Some(writer_properties()),
    )
    .expect("a Parquet writer");
    let mut batch = BronzeBatch::new();
    let mut rows = 0;
    let mut lines = text.split('\n').filter(|l| !l.trim().is_empty()).peekable();
    while lines.peek().is_some() {
        let ready = timed(parts, "parse", || {
            for line in lines.by_ref().take(BATCH_ROWS) {
                batch.push(line);
            }
            batch.finish(schema, &file)
        });
        rows += ready.num_rows();
        timed(parts, "write", || {
            writer.write(&ready).expect("write bronze")
        });
    }
    timed(parts, "write", || writer.close().expect("close bronze"));
    rows
}

fn silver_schema() -> SchemaRef {
    // UTC as an offset: naming it would need the time zone database (the Parquet is the same).
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Int64, true),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("product_id", DataType::Int64, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("status", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("created_at", ts.clone(), true),
        Field::new("updated_at", ts, true),
        Field::new("order_date", DataType::Date32, true),
    ]))
}

/// Silver's columns from a bronze batch: each text column cast to its type (safe casts: a
/// value that does not convert is NULL, as silver's `TRY_CAST` makes it).
fn to_silver(bronze: &RecordBatch, schema: &SchemaRef) -> RecordBatch {
    let options = CastOptions::default();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|field| {
            let (source, to) = match field.name().as_str() {
                "order_date" => (
                    "created_at",
                    DataType::Timestamp(TimeUnit::Microsecond, None),
                ),
                name => (name, field.data_type().clone()),
            };
            let text = bronze.column_by_name(source).expect("a bronze column");
            let typed = cast_with_options(text, &to, &options).expect("a cast");
            if field.name() == "order_date" {
                cast_with_options(&typed, &DataType::Date32, &options).expect("a cast")
            } else {
                typed
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).expect("silver columns match their schema")
}

fn silver_file(input: &Path, output: &Path, schema: &SchemaRef, parts: &Parts) -> usize {
    let reader = timed(parts, "read", || {
        ParquetRecordBatchReaderBuilder::try_new(File::open(input).expect("open bronze"))
            .expect("a bronze file")
            .with_batch_size(BATCH_ROWS)
            .build()
            .expect("a bronze reader")
    });
    let mut writer = ArrowWriter::try_new(
        File::create(output).expect("create a silver file"),
        schema.clone(),
        Some(writer_properties()),
    )
    .expect("a Parquet writer");
    let mut rows = 0;
    let mut reader = reader.into_iter();
    while let Some(batch) = timed(parts, "read", || reader.next()) {
        let batch = batch.expect("read bronze");
        let silver = timed(parts, "convert", || to_silver(&batch, schema));
        rows += silver.num_rows();
        timed(parts, "write", || {
            writer.write(&silver).expect("write silver")
        });
    }
    timed(parts, "write", || writer.close().expect("close silver"));
    rows
}

/// Runs one stage over `inputs`, writing `<out>/<n>.parquet` each; prints nothing.
fn stage(
    inputs: &[PathBuf],
    out: &Path,
    threads: usize,
    run: impl Fn(&Path, &Path, &Parts) -> usize + Sync,
) -> (Duration, usize, Parts, Vec<PathBuf>) {
    fs::create_dir_all(out).expect("create the stage's directory");
    let outputs: Vec<PathBuf> = (0..inputs.len())
        .map(|i| out.join(format!("part-{i:05}.parquet")))
        .collect();
    let parts = Parts::default();
    let rows = AtomicUsize::new(0);
    let started = Instant::now();
    on_threads(inputs, threads, |i, input| {
        rows.fetch_add(run(input, &outputs[i], &parts), Ordering::Relaxed);
    });
    (started.elapsed(), rows.into_inner(), parts, outputs)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut threads = 2;
    let mut paths = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--threads" => {
                threads = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--threads takes a number")
            }
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    let [data, work] = paths.as_slice() else {
        eprintln!("usage: medallion-floor <data dir> <work dir> [--threads N]");
        std::process::exit(2);
    };
    let mut raw: Vec<PathBuf> = fs::read_dir(data.join("orders"))
        .expect("the data's orders directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    raw.sort();
    let _ = fs::remove_dir_all(work);

    let bronze = bronze_schema();
    let (bronze_time, bronze_rows, bronze_parts, bronze_files) = stage(
        &raw,
        &work.join("bronze"),
        threads,
        |input, output, parts| bronze_file(input, output, &bronze, parts),
    );
    let silver = silver_schema();
    let (silver_time, silver_rows, silver_parts, _) = stage(
        &bronze_files,
        &work.join("silver"),
        threads,
        |input, output, parts| silver_file(input, output, &silver, parts),
    );
    println!(
        "{{\"rows\": {bronze_rows}, \"silver_rows\": {silver_rows}, \"threads\": {threads}, \
         \"stages\": {{\"bronze\": {:.3}, \"silver\": {:.3}}}, \
         \"parts\": {{\"bronze\": {}, \"silver\": {}}}}}",
        bronze_time.as_secs_f64(),
        silver_time.as_secs_f64(),
        bronze_parts.json(),
        silver_parts.json(),
    );
}
