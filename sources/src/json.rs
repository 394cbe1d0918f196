//! JSON lines: one object per line.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

use crate::text::TextBatch;
use crate::{BATCH_ROWS, Chunk, SourceError};

pub(crate) struct JsonReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line_no: u64,
    batch: TextBatch,
    done: bool,
}

impl JsonReader {
    pub(crate) fn open(path: &Path, schema: SchemaRef) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|e| SourceError::new(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            line_no: 0,
            batch: TextBatch::new(schema),
            done: false,
        })
    }

    fn push_line(&mut self, line: &str) {
        match serde_json::from_str::<Map<String, Value>>(line) {
            Err(_) => self.batch.push_corrupt(self.line_no, line),
            Ok(object) => {
                let mut fields = vec![None; self.batch.data_columns()];
                let mut rescued = Map::new();
                for (key, value) in object {
                    match self.batch.column_index(&key) {
                        Some(i) => fields[i] = raw_text(value),
                        None => {
                            rescued.insert(key, value);
                        }
                    }
                }
                self.batch.push(self.line_no, fields, rescued);
            }
        }
    }
}

/// The text of a JSON value as a raw column holds it: strings unquoted, nested values as JSON.
pub(crate) fn raw_text(value: Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

impl Iterator for JsonReader {
    type Item = Result<Chunk, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.batch.len() < BATCH_ROWS {
            match self.lines.next() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // Not UTF-8: keep what we can of the line rather than fail the file.
                    self.line_no += 1;
                    self.batch
                        .push_corrupt(self.line_no, "<line is not valid UTF-8>");
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(SourceError {
                        line: Some(self.line_no + 1),
                        ..SourceError::new(&self.path, e)
                    }));
                }
                Some(Ok(line)) => {
                    self.line_no += 1;
                    if !line.trim().is_empty() {
                        self.push_line(&line);
                    }
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
