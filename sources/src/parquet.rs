//! Parquet files: typed already, so only casts to the declared types can rescue values.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, new_null_array};
use arrow::compute::{CastOptions, cast, cast_with_options};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::json::LineDelimitedWriter;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::{Map, Value};

use crate::{BATCH_ROWS, Chunk, ReadOptions, SourceError};

pub(crate) struct ParquetReader {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    schema: SchemaRef,
    /// Rows read so far; the `_line` of a rescued row is its 1-based row number.
    rows: u64,
    /// Columns the table does not have are dropped, not rescued.
    ignore_new_fields: bool,
}

impl ParquetReader {
    pub(crate) fn open(
        file: File,
        path: &Path,
        options: &ReadOptions,
        schema: SchemaRef,
    ) -> Result<Self, SourceError> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
            .map_err(|e| SourceError::new(path, format!("not a readable Parquet file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            schema,
            rows: 0,
            ignore_new_fields: options.ignore_new_fields,
        })
    }

    fn convert(&mut self, input: &RecordBatch) -> Result<Chunk, arrow::error::ArrowError> {
        let n = input.num_rows();
        let data_fields = &self.schema.fields()[..self.schema.fields().len() - 1];
        let mut rescued: Vec<Option<Map<String, Value>>> = vec![None; n];
        // Rows with a value that does not fit its column (the rest of the rescued rows only
        // carry columns the table does not have).
        let mut malformed = vec![false; n];
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(data_fields.len() + 1);
        let safe = CastOptions {
            safe: true,
            ..Default::default()
        };
        for field in data_fields {
            let Some(source) = input.column_by_name(field.name()) else {
                arrays.push(new_null_array(field.data_type(), n));
                continue;
            };
            let typed = cast_with_options(source, field.data_type(), &safe)?;
            if typed.null_count() > source.null_count() {
                let text = cast(source, &DataType::Utf8)?;
                let text = text
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8");
                for (row, slot) in rescued.iter_mut().enumerate() {
                    if source.is_valid(row) && typed.is_null(row) {
                        slot.get_or_insert_with(Map::new).insert(
                            field.name().clone(),
                            Value::String(text.value(row).to_string()),
                        );
                        malformed[row] = true;
                    }
                }
            }
            arrays.push(typed);
        }
        if !self.ignore_new_fields {
            self.rescue_extra_columns(input, &mut rescued)?;
        }
        let mut count = 0;
        let first_row = self.rows;
        let rescued: StringArray = rescued
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.map(|mut m| {
                    count += 1;
                    m.insert("_line".into(), Value::from(first_row + i as u64 + 1));
                    Value::Object(m).to_string()
                })
            })
            .collect();
        self.rows += n as u64;
        arrays.push(Arc::new(rescued));
        Ok(Chunk {
            batch: RecordBatch::try_new(self.schema.clone(), arrays)?,
            rescued: count,
            malformed: malformed.into_iter().filter(|m| *m).count(),
        })
    }

    /// Columns the table does not have are kept, as JSON, in `_rescued_data`.
    fn rescue_extra_columns(
        &self,
        input: &RecordBatch,
        rescued: &mut [Option<Map<String, Value>>],
    ) -> Result<(), arrow::error::ArrowError> {
        let extra: Vec<usize> = input
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| self.schema.field_with_name(f.name()).is_err())
            .map(|(i, _)| i)
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        let mut writer = LineDelimitedWriter::new(&mut out);
        writer.write(&input.project(&extra)?)?;
        writer.finish()?;
        for (slot, line) in rescued.iter_mut().zip(out.split(|b| *b == b'\n')) {
            if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(line)
                && !m.is_empty()
            {
                slot.get_or_insert_with(Map::new).extend(m);
            }
        }
        Ok(())
    }
}

impl Iterator for ParquetReader {
    type Item = Result<Chunk, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.reader.next()? {
            Ok(b) => b,
            Err(e) => return Some(Err(SourceError::new(&self.path, e))),
        };
        Some(
            self.convert(&batch)
                .map_err(|e| SourceError::new(&self.path, e)),
        )
    }
}
