//! The steps of silver that DataFusion does not do for us.
//!
//! - [`Filtered`] keeps the rows that pass the filters and counts, on the way, the rows it saw
//!   and the rows it kept, so the metrics cost no second scan; [`Once`] hands such a stream back
//!   to DataFusion as a table partition, for the dedupe sort.
//! - [`CastChecked`] fails on the first value that did not cast to its declared type, naming
//!   column, value and source file, and drops the columns that carried that information.
//! - [`FirstPerKey`] keeps the latest row per key: silver sorts rows by key and then latest
//!   first, so the first row of every key is the one to keep. Sorting spills to disk under the
//!   memory pool, and this pass only compares each row's key with the row before it, so
//!   deduplication costs one sort whatever the number of keys (a window function would keep
//!   state per key).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::{Stream, StreamExt};

/// One step of a batch stream: each input batch becomes one output batch.
pub(crate) trait BatchStep: Send + Unpin {
    fn schema(&self) -> SchemaRef;
    fn step(&mut self, batch: RecordBatch) -> Result<RecordBatch>;
}

/// A stream of batches through a [`BatchStep`]; errors pass through unchanged.
pub(crate) struct Stepped<S> {
    input: SendableRecordBatchStream,
    step: S,
}

impl<S: BatchStep> Stepped<S> {
    pub(crate) fn new(input: SendableRecordBatchStream, step: S) -> Self {
        Self { input, step }
    }
}

impl<S: BatchStep> Stream for Stepped<S> {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(this.step.step(batch))),
            other => other,
        }
    }
}

impl<S: BatchStep> RecordBatchStream for Stepped<S> {
    fn schema(&self) -> SchemaRef {
        self.step.schema()
    }
}

/// Rows seen and rows kept by the [`Filtered`] streams of one task.
#[derive(Debug, Default)]
pub(crate) struct FilterCounts {
    rows: AtomicU64,
    kept: AtomicU64,
}

impl FilterCounts {
    /// Rows seen and rows kept; final once the streams have ended.
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.kept.load(Ordering::Relaxed),
        )
    }
}

/// Keeps the rows whose `pass` column is true and drops that column; counts rows in and out.
pub(crate) struct Filtered {
    /// Index of the boolean column saying whether the row passes; `None` keeps every row.
    pass: Option<usize>,
    counts: Arc<FilterCounts>,
    schema: SchemaRef,
}

impl Filtered {
    pub(crate) fn new(
        input: SendableRecordBatchStream,
        pass: Option<usize>,
        counts: Arc<FilterCounts>,
    ) -> Stepped<Self> {
        let input_schema = input.schema();
        let schema = match pass {
            Some(p) => {
                let mut fields = input_schema.fields().to_vec();
                fields.remove(p);
                Arc::new(datafusion::arrow::datatypes::Schema::new_with_metadata(
                    fields,
                    input_schema.metadata().clone(),
                ))
            }
            None => input_schema,
        };
        let step = Self {
            pass,
            counts,
            schema,
        };
        Stepped { input, step }
    }
}

impl BatchStep for Filtered {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, mut batch: RecordBatch) -> Result<RecordBatch> {
        self.counts
            .rows
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        if let Some(p) = self.pass {
            let pass = batch.remove_column(p);
            let pass = pass.as_boolean_opt().ok_or_else(|| {
                DataFusionError::Internal("the filter column is not boolean".into())
            })?;
            // NULL fails, as in SQL's WHERE (and in Arrow's filter).
            batch = filter_record_batch(&batch, pass)?;
        }
        self.counts
            .kept
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(batch)
    }
}

/// A stream that is already running, as a partition of a DataFusion table: the plan reading
/// it may execute it once.
pub(crate) struct Once {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl Once {
    pub(crate) fn new(stream: SendableRecordBatchStream) -> Self {
        Self {
            schema: stream.schema(),
            stream: Mutex::new(Some(stream)),
        }
    }
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PartitionStream for Once {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().map(|mut s| s.take()).ok().flatten();
        taken.unwrap_or_else(|| {
            Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                futures::stream::once(async {
                    Err(DataFusionError::Internal(
                        "a one-shot partition was executed twice".into(),
                    ))
                }),
            ))
        })
    }
}

/// Passes on the first row of each run of equal keys.
pub(crate) struct FirstPerKey {
    schema: SchemaRef,
    keys: Vec<usize>,
    converter: RowConverter,
    /// The key of the last row seen, carried from one batch to the next.
    last: Option<OwnedRow>,
}

impl FirstPerKey {
    /// `keys` are the indices of the key columns in the input's schema.
    pub(crate) fn new(input: SendableRecordBatchStream, keys: Vec<usize>) -> Result<Stepped<Self>> {
        let schema = input.schema();
        let fields = keys
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect();
        let step = Self {
            converter: RowConverter::new(fields)?,
            schema,
            keys,
            last: None,
        };
        Ok(Stepped { input, step })
    }
}

impl BatchStep for FirstPerKey {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let columns: Vec<_> = self.keys.iter().map(|i| batch.column(*i).clone()).collect();
        let rows = self.converter.convert_columns(&columns)?;
        let mut previous = self.last.as_ref().map(|r| r.row());
        let keep: BooleanArray = rows
            .iter()
            .map(|row| {
                let first = previous != Some(row);
                previous = Some(row);
                Some(first)
            })
            .collect();
        if let Some(last) = rows.iter().next_back() {
            self.last = Some(last.owned());
        }
        Ok(filter_record_batch(&batch, &keep)?)
    }
}

/// A typed column whose values are checked: the stream carries, next to the output columns,
/// the text of every value that did not cast (NULL where it did).
pub(crate) struct CheckedColumn {
    pub name: String,
    pub declared: String,
    /// Index of the column holding the text of values that did not cast.
    pub bad: usize,
}

/// Fails on the first value that did not cast; passes on the `output` columns.
pub(crate) struct CastChecked {
    columns: Vec<CheckedColumn>,
    /// Index of the source file column, to name the file in the error.
    file: Option<usize>,
    output: Vec<usize>,
    schema: SchemaRef,
}

impl CastChecked {
    pub(crate) fn new(
        input: SendableRecordBatchStream,
        output: Vec<usize>,
        columns: Vec<CheckedColumn>,
        file: Option<usize>,
    ) -> Result<Stepped<Self>> {
        let schema = std::sync::Arc::new(input.schema().project(&output)?);
        let step = Self {
            columns,
            file,
            output,
            schema,
        };
        Ok(Stepped { input, step })
    }
}

impl BatchStep for CastChecked {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        for c in &self.columns {
            let bad = batch.column(c.bad);
            if bad.null_count() == bad.len() {
                continue;
            }
            let row = (0..bad.len())
                .find(|r| bad.is_valid(*r))
                .expect("a non-null value");
            let text = datafusion::arrow::compute::cast(
                bad,
                &datafusion::arrow::datatypes::DataType::Utf8,
            )?;
            let value = text.as_string::<i32>().value(row);
            let origin = self
                .file
                .and_then(|f| {
                    let files = datafusion::arrow::compute::cast(
                        batch.column(f),
                        &datafusion::arrow::datatypes::DataType::Utf8,
                    )
                    .ok()?;
                    let files = files.as_string::<i32>();
                    files
                        .is_valid(row)
                        .then(|| format!(" (from {})", files.value(row)))
                })
                .unwrap_or_default();
            return Err(DataFusionError::Execution(format!(
                "column '{}': value '{value}' cannot be cast to {}{origin}",
                c.name, c.declared
            )));
        }
        Ok(batch.project(&self.output)?)
    }
}
