//! CSV with an optional header line.
//!
//! Nothing is dropped silently: a record with the wrong number of fields, or one that is not
//! UTF-8, is rescued whole; a header name that repeats fills its column once, and the repeats
//! are rescued under their position (`_c<i>`); a quote left open at the end of the file, which
//! would swallow every line after it into one field, is rescued as a corrupt record.

use std::fs::File;
use std::io::Read;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;

use crate::text::{RecordSource, Rescued, TextBatch, TextReader, json_string, open_text};
use crate::{ReadOptions, SourceError};

type Records = csv::ByteRecordsIntoIter<Tail<Box<dyn Read + Send>>>;

pub(crate) struct CsvRecords {
    path: PathBuf,
    records: Peekable<Records>,
    /// The last bytes of the file, once read to its end.
    tail: Arc<Mutex<Vec<u8>>>,
    delimiter: u8,
    header: bool,
    /// For each field position: the data column it fills, or the name it is rescued under.
    /// Decided by the first record.
    targets: Option<Vec<Target>>,
}

enum Target {
    Column(usize),
    Rescued(String),
    /// A field without a column, dropped (`schema_evolution: none`).
    Ignored,
}

impl CsvRecords {
    pub(crate) fn open(
        file: File,
        path: &Path,
        options: &ReadOptions,
        schema: SchemaRef,
    ) -> Result<TextReader<Self>, SourceError> {
        let text: Box<dyn Read + Send> = Box::new(open_text(file, path)?);
        let tail = Arc::new(Mutex::new(Vec::new()));
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter)
            .from_reader(Tail {
                inner: text,
                tail: tail.clone(),
            });
        let source = Self {
            path: path.to_path_buf(),
            records: reader.into_byte_records().peekable(),
            tail,
            delimiter: options.delimiter,
            header: options.header,
            targets: None,
        };
        Ok(TextReader::new(source, path, options, schema))
    }

    /// Maps field positions to columns: by header name, or by position without a header.
    fn targets_from(&self, batch: &TextBatch, first: &csv::ByteRecord) -> Vec<Target> {
        let mut named = std::collections::HashSet::new();
        (0..first.len())
            .map(|i| {
                if !self.header {
                    return if i < batch.data_columns() {
                        Target::Column(i)
                    } else if batch.ignore_new_fields {
                        Target::Ignored
                    } else {
                        Target::Rescued(format!("_c{i}"))
                    };
                }
                let name = String::from_utf8_lossy(&first[i]).trim().to_string();
                if !named.insert(name.clone()) {
                    return Target::Rescued(format!("_c{i}"));
                }
                match batch.column_index(&name) {
                    Some(c) => Target::Column(c),
                    None if batch.ignore_new_fields => Target::Ignored,
                    None => Target::Rescued(name),
                }
            })
            .collect()
    }

    /// Whether `record`, the file's last, ends inside a quoted field: it has a line break in a
    /// field (so the field was quoted) but the file does not end with the closing quote.
    fn unterminated(&mut self, record: &csv::ByteRecord) -> bool {
        if self.records.peek().is_some() || !record.iter().any(|f| f.contains(&b'\n')) {
            return false;
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let end = tail.iter().rposition(|b| !b" \t\r\n".contains(b));
        end.is_none_or(|i| tail[i] != b'"')
    }
}

/// Bytes [`Tail`] keeps.
const TAIL: usize = 16;

/// Keeps the last bytes read through it, for [`CsvRecords::unterminated`].
struct Tail<R> {
    inner: R,
    tail: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend_from_slice(&buf[n.saturating_sub(TAIL)..n]);
            let excess = tail.len().saturating_sub(TAIL);
            tail.drain(..excess);
        }
        Ok(n)
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
        if self.unterminated(&record) {
            batch.push_corrupt(line, &raw_record(&record, self.delimiter));
            return Ok(true);
        }
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
    if record.len() != targets.len() {
        return batch.push_corrupt(line, &raw_record(record, delimiter));
    }
    let mut fields = vec![None; batch.data_columns()];
    let mut rescued = Rescued::new();
    for (target, bytes) in targets.iter().zip(record.iter()) {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return batch.push_corrupt(line, &raw_record(record, delimiter));
        };
        if text.is_empty() {
            continue;
        }
        match target {
            Target::Column(c) => fields[*c] = Some(text.to_string()),
            Target::Rescued(name) => {
                rescued.insert(name.clone(), json_string(text));
            }
            Target::Ignored => {}
        }
    }
    batch.push(line, fields, rescued);
}

/// A record's fields joined again, as the corrupt record it is kept as.
fn raw_record(record: &csv::ByteRecord, delimiter: u8) -> String {
    let fields: Vec<String> = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    fields.join(&(delimiter as char).to_string())
}
