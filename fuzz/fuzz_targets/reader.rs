//! Shared by the reader targets: any bytes as a file of `format`, read into two columns
//! (one typed) and `_rescued_data`. Reading answers with rows, rescued rows or an error naming
//! the file; never a panic.

use std::io::Write;

use arrow_schema::{DataType, Field, Schema};
use medallion_pipeline::spec::SourceFormat;
use medallion_sources::{ReadOptions, read_file};

pub fn read(format: SourceFormat, bytes: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    file.write_all(bytes).expect("write");
    let options = ReadOptions {
        format,
        header: true,
        delimiter: b',',
        ignore_new_fields: false,
    };
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]);
    if let Ok(chunks) = read_file(file.path(), None, &options, &schema) {
        for chunk in chunks {
            if chunk.is_err() {
                break;
            }
        }
    }
    let _ = medallion_sources::infer_schema(&[file.path()], &options, 100);
}
