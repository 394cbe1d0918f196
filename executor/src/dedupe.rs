//! Keeping the first row of each key in a stream sorted by key.
//!
//! Silver sorts rows by key and then by "latest first"; the first row of every key is the one
//! to keep. Sorting spills to disk under the memory pool, and this pass only compares each
//! row's key with the row before it, so deduplication costs one sort, whatever the number of
//! keys (a window function would keep state per key).

use std::pin::Pin;
use std::task::{Context, Poll};

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::error::Result;
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
