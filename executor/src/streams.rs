//! The last steps of silver, on the stream of rows that passed the filters.
//!
//! - [`CastChecked`] fails on the first value that did not cast to its declared type, naming
//!   column, value and source file, and drops the columns that carried that information.
//! - [`FirstPerKey`] keeps the latest row per key: silver sorts rows by key and then latest
//!   first, so the first row of every key is the one to keep. Sorting spills to disk under the
//!   memory pool, and this pass only compares each row's key with the row before it, so
//!   deduplication costs one sort whatever the number of keys (a window function would keep
//!   state per key).

use std::pin::Pin;
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::{Stream, StreamExt};

/// Passes on the first row of each run of equal keys.
pub(crate) struct FirstPerKey {
    input: SendableRecordBatchStream,
    keys: Vec<usize>,
    converter: RowConverter,
    /// The key of the last row seen, carried from one batch to the next.
    last: Option<OwnedRow>,
}

impl FirstPerKey {
    /// `keys` are the indices of the key columns in the input's schema.
    pub(crate) fn new(input: SendableRecordBatchStream, keys: Vec<usize>) -> Result<Self> {
        let schema = input.schema();
        let fields = keys
            .iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect();
        Ok(Self {
            converter: RowConverter::new(fields)?,
            input,
            keys,
            last: None,
        })
    }

    fn first_rows(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
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
        Ok(filter_record_batch(batch, &keep)?)
    }
}

impl Stream for FirstPerKey {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(this.first_rows(&batch))),
            other => other,
        }
    }
}

impl RecordBatchStream for FirstPerKey {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
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

/// Fails on the first value that did not cast; passes on the first `output` columns.
pub(crate) struct CastChecked {
    input: SendableRecordBatchStream,
    columns: Vec<CheckedColumn>,
    /// Index of the source file column, to name the file in the error.
    file: Option<usize>,
    schema: SchemaRef,
}

impl CastChecked {
    pub(crate) fn new(
        input: SendableRecordBatchStream,
        output: usize,
        columns: Vec<CheckedColumn>,
        file: Option<usize>,
    ) -> Result<Self> {
        let schema = std::sync::Arc::new(input.schema().project(&(0..output).collect::<Vec<_>>())?);
        Ok(Self {
            input,
            columns,
            file,
            schema,
        })
    }

    fn check(&self, batch: &RecordBatch) -> Result<RecordBatch> {
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
        Ok(batch.project(&(0..self.schema.fields().len()).collect::<Vec<_>>())?)
    }
}

impl Stream for CastChecked {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.input.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(batch))) => Poll::Ready(Some(this.check(&batch))),
            other => other,
        }
    }
}

impl RecordBatchStream for CastChecked {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
