//! Readers for the file formats a source can have.
//!
//! Every reader turns one file into Arrow batches with the columns it was asked for plus
//! [`RESCUED_DATA`](medallion_pipeline::meta::RESCUED_DATA). A record that cannot be parsed,
//! a field the columns do not have, or a value that does not fit its declared type is never
//! dropped: it lands in `_rescued_data` as JSON (with the record's `_line`), and is counted.

mod csv;
pub mod http;
mod infer;
mod json;
pub mod kafka;
mod parquet;
pub mod postgres;
mod text;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use medallion_pipeline::meta::RESCUED_DATA;
use medallion_pipeline::spec::{SchemaEvolution, SourceFormat, SourceSpec};

pub use infer::infer_schema;

/// Rows per batch the readers produce.
pub const BATCH_ROWS: usize = 8192;

/// A secret a source names, read in this process: the environment variable `env`, or the
/// first line of `file` (relative to the spec); `None` when it names neither. `field` (as
/// `http.auth.token`) names them in errors, which never hold the secret.
pub(crate) fn read_secret(
    pipeline: &medallion_pipeline::Pipeline,
    field: &str,
    env: Option<&str>,
    file: Option<&str>,
) -> Result<Option<String>, String> {
    match (env, file) {
        (Some(var), _) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("the environment variable {var} ({field}_env) is not set")),
        (None, Some(file)) => {
            let path = pipeline.spec_relative(file);
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{field}_file {path}: {e}"))?;
            Ok(Some(text.lines().next().unwrap_or_default().to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// A source file could not be read at all (as opposed to a bad record, which is rescued).
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SourceError {
    pub file: String,
    pub line: Option<u64>,
    pub message: String,
}

impl SourceError {
    pub fn new(file: &Path, message: impl ToString) -> Self {
        Self {
            file: file.display().to_string(),
            line: None,
            message: message.to_string(),
        }
    }
}

/// How to read a source's files.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub format: SourceFormat,
    pub header: bool,
    pub delimiter: u8,
    /// Fields the columns do not have are dropped instead of rescued
    /// (`schema_evolution: none`).
    pub ignore_new_fields: bool,
}

impl ReadOptions {
    pub fn new(source: &SourceSpec) -> Self {
        let options = &source.options;
        Self {
            format: source.file_format(),
            header: options.header,
            delimiter: options
                .delimiter
                .value
                .as_bytes()
                .first()
                .copied()
                .unwrap_or(b','),
            ignore_new_fields: source.schema_evolution() == SchemaEvolution::None,
        }
    }
}

/// Rows read from a file, with how many of them were (partly) rescued.
#[derive(Debug)]
pub struct Chunk {
    /// The requested columns, then `_rescued_data`.
    pub batch: RecordBatch,
    /// Rows with something in `_rescued_data`.
    pub rescued: usize,
    /// Of those, the rows that did not parse or had a value that did not fit its column; the
    /// others only carried fields the columns do not have.
    pub malformed: usize,
}

/// The schema of what the readers produce: the data columns, then `_rescued_data`.
pub fn with_rescued_column(data: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = data
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.push(Field::new(RESCUED_DATA, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Opens a file for reading into `data` columns (plus `_rescued_data`). `real`: the path
/// without links a confined pipeline's planner checked; see [`open`].
pub fn read_file(
    path: &Path,
    real: Option<&Path>,
    options: &ReadOptions,
    data: &Schema,
) -> Result<Box<dyn Iterator<Item = Result<Chunk, SourceError>> + Send>, SourceError> {
    let out = with_rescued_column(data);
    let file = open(path, real)?;
    Ok(match options.format {
        SourceFormat::Json => Box::new(json::JsonLines::open(file, path, options, out)?),
        SourceFormat::Csv => Box::new(csv::CsvRecords::open(file, path, options, out)?),
        SourceFormat::Parquet => Box::new(parquet::ParquetReader::open(file, path, options, out)?),
    })
}

/// Opens `path`; with `real`, refuses it unless the file opened is the one at `real`.
///
/// A confined pipeline's files are checked at planning, by their path without links; a link
/// put in place of the file or of a directory above it before an executor opens it would
/// lead elsewhere. So the check is made again on the open file itself (on Linux, the path
/// the kernel gives its descriptor), and a file that moved is not read.
pub fn open(path: &Path, real: Option<&Path>) -> Result<File, SourceError> {
    let file = File::open(path).map_err(|e| SourceError::new(path, e))?;
    let Some(real) = real else {
        return Ok(file);
    };
    let opened = opened_path(&file, path).map_err(|e| SourceError::new(path, e))?;
    if opened != real {
        return Err(SourceError::new(
            path,
            format!(
                "now leads to '{}', not to '{}' where it was when the run was planned \
                 (a link was put in its place); not read",
                opened.display(),
                real.display()
            ),
        ));
    }
    Ok(file)
}

#[cfg(target_os = "linux")]
fn opened_path(file: &File, _path: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Elsewhere, the path resolved again just after opening (a narrower window, not none).
#[cfg(not(target_os = "linux"))]
fn opened_path(_file: &File, path: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(path)
}

#[cfg(test)]
mod tests;
