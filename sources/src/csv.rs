//! CSV with an optional header line.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use serde_json::{Map, Value};

use crate::text::{RecordSource, TextBatch, TextReader};
use crate::{ReadOptions, SourceError};

pub(crate) struct CsvRecords {
    path: PathBuf,
    records: csv::ByteRecordsIntoIter<File>,
    delimiter: u8,
    header: bool,
    /// For each field position: the data column it fills, or the name it is rescued under.
    /// Decided by the first record.
    targets: Option<Vec<Target>>,
}

enum Target {
    Column(usize),
    Rescued(String),
}

impl CsvRecords {
    pub(crate) fn open(
        path: &Path,
        options: &ReadOptions,
        schema: SchemaRef,
    ) -> Result<TextReader<Self>, SourceError> {
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter)
            .from_path(path)
            .map_err(|e| SourceError::new(path, e))?;
        let source = Self {
            path: path.to_path_buf(),
            records: reader.into_byte_records(),
            delimiter: options.delimiter,
            header: options.header,
            targets: None,
        };
        Ok(TextReader::new(source, path, schema))
    }

    /// Maps field positions to columns: by header name, or by position without a header.
    fn targets_from(&self, batch: &TextBatch, first: &csv::ByteRecord) -> Vec<Target> {
        (0..first.len())
            .map(|i| {
                if !self.header {
                    return if i < batch.data_columns() {
                        Target::Column(i)
                    } else {
                        Target::Rescued(format!("_c{i}"))
                    };
                }
                let name = String::from_utf8_lossy(&first[i]).trim().to_string();
                match batch.column_index(&name) {
                    Some(c) => Target::Column(c),
                    None => Target::Rescued(name),
                }
            })
            .collect()
    }
}

impl RecordSource for CsvRecords {
    fn push_next(&mut self, batch: &mut TextBatch) -> Result<bool, SourceError> {
        let record = match self.records.next() {
            None => return Ok(false),
            Some(Err(e)) => {
                return Err(SourceError {
                    line: e.position().map(|p| p.line()),
                    ..SourceError::new(&self.path, e)
                });
            }
            Some(Ok(record)) => record,
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let targets = match &self.targets {
            Some(t) => t,
            None => {
                let targets = self.targets_from(batch, &record);
                let targets = self.targets.insert(targets);
                if self.header {
                    return Ok(true);
                }
                targets
            }
        };
        push_record(batch, targets, self.delimiter, line, &record);
        Ok(true)
    }
}

/// Adds one CSV record; a record with the wrong number of fields is kept whole as corrupt.
fn push_record(
    batch: &mut TextBatch,
    targets: &[Target],
    delimiter: u8,
    line: u64,
    record: &csv::ByteRecord,
) {
    let raw = || {
        let fields: Vec<String> = record
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        fields.join(&(delimiter as char).to_string())
    };
    if record.len() != targets.len() {
        return batch.push_corrupt(line, &raw());
    }
    let mut fields = vec![None; batch.data_columns()];
    let mut rescued = Map::new();
    for (target, bytes) in targets.iter().zip(record.iter()) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return batch.push_corrupt(line, &raw());
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
    batch.push(line, fields, rescued);
}
