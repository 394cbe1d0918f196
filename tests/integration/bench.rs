//! The benchmark harness itself, at a tiny scale: every peer runs, agrees with Medallion's gold
//! tables, and the report and chart are written. (The real runs are `bench/run`, not tests.)

use std::process::Command;

use medallion_tests::{medallion_bin, python};

#[test]
fn benchmark_harness_smoke_run() {
    let out_dir = tempfile::tempdir().unwrap();
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/harness.py");
    let out = Command::new(python())
        .arg(harness)
        .arg("--medallion")
        .arg(medallion_bin())
        .args(["--smoke", "--out"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stderr}");
    let report = std::fs::read_to_string(out_dir.path().join("smoke.md")).unwrap();
    for engine in [
        "| medallion | delta |",
        "| duckdb | delta |",
        "| duckdb | parquet |",
        "| polars | delta |",
        "| polars | parquet |",
        "| pyspark | parquet |",
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(engine))
            .unwrap_or_else(|| panic!("{engine} missing:\n{report}"));
        assert!(
            line.ends_with("| yes |") || engine.contains("medallion"),
            "{line}"
        );
    }
    let png = std::fs::read(out_dir.path().join("smoke.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}
