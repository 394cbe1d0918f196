//! Any text as a spec: parsing and validation answer with errors, never a panic, and take
//! time and memory in proportion to the text (YAML depth and alias budgets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use medallion_pipeline::{Pipeline, RunDate};

fuzz_target!(|text: &str| {
    let parsed = Pipeline::parse_for(
        text.into(),
        "fuzz.yaml".into(),
        "/data".into(),
        RunDate::Latest,
    );
    if let Ok(pipeline) = parsed {
        // What a valid spec goes on to: its order of tables and its computation's fingerprint.
        let _ = pipeline.dag.topological_order();
        let _ = pipeline.computation();
    }
});
