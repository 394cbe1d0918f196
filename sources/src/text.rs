//! Building typed batches from text fields, shared by the JSON and CSV readers.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

use crate::{BATCH_ROWS, Chunk, SourceError};

/// A text format read record by record (JSON lines, CSV).
pub(crate) trait RecordSource {
    /// Pushes the next record into `batch` (or skips a line that holds none, like a CSV
    /// header or a blank line); `Ok(false)` at the end of the file.
    fn push_next(&mut self, batch: &mut TextBatch) -> Result<bool, SourceError>;
}

/// Reads a text format into batches of at most [`BATCH_ROWS`] rows.
pub(crate) struct TextReader<S> {
    source: S,
    path: std::path::PathBuf,
    batch: TextBatch,
    done: bool,
}

impl<S: RecordSource> TextReader<S> {
    pub(crate) fn new(source: S, path: &std::path::Path, schema: SchemaRef) -> Self {
        Self {
            source,
            path: path.to_path_buf(),
            batch: TextBatch::new(schema),
            done: false,
        }
    }
}

impl<S: RecordSource> Iterator for TextReader<S> {
    type Item = Result<Chunk, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.batch.len() < BATCH_ROWS {
            match self.source.push_next(&mut self.batch) {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    break;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        if self.batch.len() == 0 {
            return None;
        }
        Some(
            self.batch
                .finish()
                .map_err(|e| SourceError::new(&self.path, e)),
        )
    }
}

/// Collects rows of raw text fields and turns them into a typed batch.
pub(crate) struct TextBatch {
    schema: SchemaRef,
    /// One builder per data column (all but the last, `_rescued_data`).
    columns: Vec<StringBuilder>,
    rescued: Vec<Option<Map<String, Value>>>,
    lines: Vec<u64>,
}

impl TextBatch {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        let n = schema.fields().len() - 1;
        Self {
            columns: (0..n).map(|_| StringBuilder::new()).collect(),
            schema,
            rescued: Vec::new(),
            lines: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }

    pub(crate) fn data_columns(&self) -> usize {
        self.columns.len()
    }

    /// Index of a data column by name.
    pub(crate) fn column_index(&self, name: &str) -> Option<usize> {
        self.schema
            .fields()
            .iter()
            .take(self.columns.len())
            .position(|f| f.name() == name)
    }

    /// Adds a row; `fields[i]` is the raw text of data column `i`.
    pub(crate) fn push(
        &mut self,
        line: u64,
        fields: Vec<Option<String>>,
        rescued: Map<String, Value>,
    ) {
        for (b, f) in self.columns.iter_mut().zip(fields) {
            b.append_option(f);
        }
        self.rescued.push((!rescued.is_empty()).then_some(rescued));
        self.lines.push(line);
    }

    /// Adds a record that could not be parsed at all.
    pub(crate) fn push_corrupt(&mut self, line: u64, raw: &str) {
        let mut rescued = Map::new();
        rescued.insert("_corrupt_record".into(), Value::String(raw.to_string()));
        self.push(line, vec![None; self.columns.len()], rescued);
    }

    /// Casts the text to the declared types; values that do not fit are rescued.
    pub(crate) fn finish(&mut self) -> Result<Chunk, arrow::error::ArrowError> {
        let safe = CastOptions {
            safe: true,
            ..Default::default()
        };
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 1);
        for (i, builder) in self.columns.iter_mut().enumerate() {
            let text: StringArray = builder.finish();
            let field = self.schema.field(i);
            if field.data_type() == &DataType::Utf8 {
                arrays.push(Arc::new(text));
                continue;
            }
            let typed = cast_with_options(&text, field.data_type(), &safe)?;
            for row in 0..text.len() {
                if text.is_valid(row) && typed.is_null(row) {
                    self.rescued[row].get_or_insert_with(Map::new).insert(
                        field.name().clone(),
                        Value::String(text.value(row).to_string()),
                    );
                }
            }
            arrays.push(typed);
        }
        let mut rescued_count = 0;
        let rescued: StringArray = self
            .rescued
            .drain(..)
            .zip(self.lines.drain(..))
            .map(|(r, line)| {
                r.map(|mut m| {
                    rescued_count += 1;
                    m.insert("_line".into(), Value::from(line));
                    Value::Object(m).to_string()
                })
            })
            .collect();
        arrays.push(Arc::new(rescued));
        Ok(Chunk {
            batch: RecordBatch::try_new(self.schema.clone(), arrays)?,
            rescued: rescued_count,
        })
    }
}
