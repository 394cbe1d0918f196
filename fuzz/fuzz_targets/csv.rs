//! Any bytes as a CSV file with a header (see `reader.rs`).
#![no_main]

mod reader;

use libfuzzer_sys::fuzz_target;
use medallion_pipeline::spec::SourceFormat;

fuzz_target!(|bytes: &[u8]| reader::read(SourceFormat::Csv, bytes));
