//! Building typed batches from text fields, shared by the JSON and CSV readers.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::value::RawValue;

use crate::{BATCH_ROWS, Chunk, ReadOptions, SourceError};

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
    pub(crate) fn new(
        source: S,
        path: &std::path::Path,
        options: &ReadOptions,
        schema: SchemaRef,
    ) -> Self {
        Self {
            source,
            path: path.to_path_buf(),
            batch: TextBatch::new(schema, options.ignore_new_fields),
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

/// How far into a text file [`open_text`] looks for NUL bytes.
const SNIFF_BYTES: usize = 4096;

/// Opens a text file (JSON lines, CSV) as UTF-8: a UTF-8 byte order mark is skipped, UTF-16
/// with a byte order mark is converted, and a file with NUL bytes at its start (UTF-16
/// without a byte order mark, or not text at all) is refused, before its bytes could become
/// a table's column names.
pub(crate) fn open_text(
    mut file: File,
    path: &Path,
) -> Result<impl Read + Send + use<>, SourceError> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut file)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| SourceError::new(path, e))?;
    let utf16_bom = head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]);
    if !utf16_bom && head.contains(&0) {
        return Err(SourceError::new(
            path,
            "not a UTF-8 text file: NUL bytes in its first 4 KiB (UTF-16 without a byte order \
             mark, or binary data); save it as UTF-8",
        ));
    }
    file.rewind().map_err(|e| SourceError::new(path, e))?;
    Ok(encoding_rs_io::DecodeReaderBytesBuilder::new()
        .utf8_passthru(true)
        .strip_bom(true)
        .build(file))
}

/// What a record keeps in `_rescued_data`: field name to the field's JSON, exactly as read.
pub(crate) type Rescued = std::collections::BTreeMap<String, Box<RawValue>>;

/// `text` as a JSON string.
pub(crate) fn json_string(text: &str) -> Box<RawValue> {
    let quoted = serde_json::to_string(text).expect("a string serializes");
    RawValue::from_string(quoted).expect("a serialized string is JSON")
}

/// Collects rows of raw text fields and turns them into a typed batch.
pub(crate) struct TextBatch {
    schema: SchemaRef,
    /// One builder per data column (all but the last, `_rescued_data`).
    columns: Vec<StringBuilder>,
    rescued: Vec<Option<Rescued>>,
    /// Whether each row did not parse or has a value that does not fit its column.
    malformed: Vec<bool>,
    lines: Vec<u64>,
    /// Fields without a column are dropped, not rescued (see [`ReadOptions`]).
    pub(crate) ignore_new_fields: bool,
}

impl TextBatch {
    pub(crate) fn new(schema: SchemaRef, ignore_new_fields: bool) -> Self {
        let n = schema.fields().len() - 1;
        Self {
            columns: (0..n).map(|_| StringBuilder::new()).collect(),
            schema,
            rescued: Vec::new(),
            malformed: Vec::new(),
            lines: Vec::new(),
            ignore_new_fields,
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
    pub(crate) fn push<S: AsRef<str>>(
        &mut self,
        line: u64,
        fields: Vec<Option<S>>,
        rescued: Rescued,
    ) {
        for (b, f) in self.columns.iter_mut().zip(fields) {
            b.append_option(f);
        }
        self.rescued.push((!rescued.is_empty()).then_some(rescued));
        self.malformed.push(false);
        self.lines.push(line);
    }

    /// Adds a record that could not be parsed at all.
    pub(crate) fn push_corrupt(&mut self, line: u64, raw: &str) {
        let mut rescued = Rescued::new();
        rescued.insert("_corrupt_record".into(), json_string(raw));
        self.push(line, vec![None::<&str>; self.columns.len()], rescued);
        if let Some(last) = self.malformed.last_mut() {
            *last = true;
        }
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
                    self.rescued[row]
                        .get_or_insert_with(Rescued::new)
                        .insert(field.name().clone(), json_string(text.value(row)));
                    self.malformed[row] = true;
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
                    let line = RawValue::from_string(line.to_string()).expect("a number is JSON");
                    m.insert("_line".into(), line);
                    serde_json::to_string(&m).expect("raw JSON values serialize")
                })
            })
            .collect();
        arrays.push(Arc::new(rescued));
        let malformed = self.malformed.drain(..).filter(|m| *m).count();
        Ok(Chunk {
            batch: RecordBatch::try_new(self.schema.clone(), arrays)?,
            rescued: rescued_count,
            malformed,
        })
    }
}
