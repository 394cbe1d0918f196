//! CSV with an optional header line.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

use crate::text::TextBatch;
use crate::{BATCH_ROWS, Chunk, ReadOptions, SourceError};

pub(crate) struct CsvReader {
    path: PathBuf,
    records: csv::ByteRecordsIntoIter<File>,
    delimiter: u8,
    /// For each field position: the data column it fills, or the name it is rescued under.
    targets: Option<Vec<Target>>,
    header: bool,
    batch: TextBatch,
    done: bool,
}

enum Target {
    Column(usize),
    Rescued(String),
}

impl CsvReader {
    pub(crate) fn open(
        path: &Path,
        options: &ReadOptions,
        schema: SchemaRef,
    ) -> Result<Self, SourceError> {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter)
            .from_path(path)
            .map_err(|e| SourceError::new(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            records: reader.into_byte_records(),
            delimiter: options.delimiter,
            targets: None,
            header: options.header,
            batch: TextBatch::new(schema),
            done: false,
        })
    }

    /// Maps field positions to columns: by header name, or by position without a header.
    fn targets_from(&self, first: &csv::ByteRecord) -> Vec<Target> {
        (0..first.len())
            .map(|i| {
                if !self.header {
                    return if i < self.batch.data_columns() {
                        Target::Column(i)
                    } else {
                        Target::Rescued(format!("_c{i}"))
                    };
                }
                let name = String::from_utf8_lossy(&first[i]).trim().to_string();
                match self.batch.column_index(&name) {
                    Some(c) => Target::Column(c),
                    None => Target::Rescued(name),
                }
            })
            .collect()
    }

    fn push_record(&mut self, line: u64, record: &csv::ByteRecord) {
        let targets = self
            .targets
            .as_ref()
            .expect("targets are set before records");
        if record.len() != targets.len() {
            let raw: Vec<String> = record
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            let raw = raw.join(&(self.delimiter as char).to_string());
            return self.batch.push_corrupt(line, &raw);
        }
        let mut fields = vec![None; self.batch.data_columns()];
        let mut rescued = Map::new();
        for (target, bytes) in targets.iter().zip(record.iter()) {
            let Ok(text) = std::str::from_utf8(bytes) else {
                let raw = String::from_utf8_lossy(record.as_slice()).into_owned();
                return self.batch.push_corrupt(line, &raw);
            };
            if text.is_empty() {
                continue;
            }
            match target {
                Target::Column(c) => fields[*c] = Some(text.to_string()),
                Target::Rescued(name) => {
                    rescued.insert(name.clone(), Value::String(text.to_string()));
                }
            }
        }
        self.batch.push(line, fields, rescued);
    }
}

impl Iterator for CsvReader {
    type Item = Result<Chunk, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        while self.batch.len() < BATCH_ROWS {
            match self.records.next() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => {
                    self.done = true;
                    let line = e.position().map(|p| p.line());
                    return Some(Err(SourceError {
                        line,
                        ..SourceError::new(&self.path, e)
                    }));
                }
                Some(Ok(record)) => {
                    let line = record.position().map(|p| p.line()).unwrap_or(0);
                    if self.targets.is_none() {
                        self.targets = Some(self.targets_from(&record));
                        if self.header {
                            continue;
                        }
                    }
                    self.push_record(line, &record);
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
