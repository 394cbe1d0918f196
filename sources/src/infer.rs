//! Deciding the columns of a source that declares no schema.

use std::io::{BufRead, BufReader};
use std::path::Path;

use arrow::datatypes::{DataType, Field, Schema};
use indexmap::IndexMap;
use medallion_pipeline::spec::SourceFormat;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::IgnoredAny;

use crate::text::open_text;
use crate::{ReadOptions, SourceError};

/// The columns of `files`, from the first `sample_rows` records of each.
///
/// JSON keys and CSV header names become text columns, in the order first seen: bronze keeps
/// raw values and silver declares the types. Parquet columns keep their types. Fields that
/// only show up past the sample are not lost; they land in `_rescued_data`.
pub fn infer_schema(
    files: &[&Path],
    options: &ReadOptions,
    sample_rows: usize,
) -> Result<Schema, SourceError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut add = |name: &str, data_type: &DataType| {
        if !fields.iter().any(|f| f.name() == name) {
            fields.push(Field::new(name, data_type.clone(), true));
        }
    };
    for path in files {
        match options.format {
            SourceFormat::Json => {
                for line in BufReader::new(open_text(crate::open(path, None)?, path)?)
                    .lines()
                    .take(sample_rows)
                {
                    let Ok(line) = line else { break };
                    // An IndexMap keeps the keys in the order the record has them.
                    if let Ok(object) = serde_json::from_str::<IndexMap<String, IgnoredAny>>(&line)
                    {
                        object.keys().for_each(|k| add(k, &DataType::Utf8));
                    }
                }
            }
            SourceFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .delimiter(options.delimiter)
                    .from_reader(open_text(crate::open(path, None)?, path)?);
                for record in reader.byte_records().take(sample_rows.max(1)) {
                    let record = record.map_err(|e| SourceError::new(path, e))?;
                    if options.header {
                        for name in record.iter() {
                            add(String::from_utf8_lossy(name).trim(), &DataType::Utf8);
                        }
                        break;
                    }
                    for i in 0..record.len() {
                        add(&format!("_c{i}"), &DataType::Utf8);
                    }
                }
            }
            SourceFormat::Parquet => {
                let file = crate::open(path, None)?;
                let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
                    SourceError::new(path, format!("not a readable Parquet file: {e}"))
                })?;
                for f in builder.schema().fields() {
                    add(f.name(), f.data_type());
                }
            }
        }
    }
    Ok(Schema::new(fields))
}
