//! Any bytes as a JSON lines file (see `reader.rs`).
#![no_main]

mod reader;

use libfuzzer_sys::fuzz_target;
use medallion_pipeline::spec::SourceFormat;

fuzz_target!(|bytes: &[u8]| reader::read(SourceFormat::Json, bytes));
