//! JSON lines: one object per line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

use crate::SourceError;
use crate::text::{RecordSource, TextBatch, TextReader};

pub(crate) struct JsonLines {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_no: u64,
}

impl JsonLines {
    pub(crate) fn open(path: &Path, schema: SchemaRef) -> Result<TextReader<Self>, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::new(path, e))?;
        let source = Self {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            line_no: 0,
        };
        Ok(TextReader::new(source, path, schema))
    }
}

impl RecordSource for JsonLines {
    fn push_next(&mut self, batch: &mut TextBatch) -> Result<bool, SourceError> {
        let Some(line) = self.lines.next() else {
            return Ok(false);
        };
        self.line_no += 1;
        match line {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => push_object(batch, self.line_no, &line),
            // Not UTF-8: keep what we can of the line rather than fail the file.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                batch.push_corrupt(self.line_no, "<line is not valid UTF-8>")
            }
            Err(e) => {
                return Err(SourceError {
                    line: Some(self.line_no),
                    ..SourceError::new(&self.path, e)
                });
            }
        }
        Ok(true)
    }
}

/// Adds one JSON line: its fields to their columns, other fields to `_rescued_data`.
fn push_object(batch: &mut TextBatch, line_no: u64, line: &str) {
    let Ok(object) = serde_json::from_str::<Map<String, Value>>(line) else {
        return batch.push_corrupt(line_no, line);
    };
    let mut fields = vec![None; batch.data_columns()];
    let mut rescued = Map::new();
    for (key, value) in object {
        match batch.column_index(&key) {
            Some(i) => fields[i] = raw_text(value),
            None => {
                rescued.insert(key, value);
            }
        }
    }
    batch.push(line_no, fields, rescued);
}

/// The text of a JSON value as a raw column holds it: strings unquoted, nested values as JSON.
fn raw_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}
