//! The benchmark harness itself, at a tiny scale: both workloads run on every peer and on
//! Medallion embedded and as a local cluster, each agrees with Medallion's gold tables, and the
//! report and chart are written, with re-runs after a small batch. (The real runs are
//! `bench/run`, not tests.)

use std::process::Command;

use medallion_tests::{medallion_bin, python};

#[test]
fn benchmark_harness_smoke_run() {
    let out_dir = tempfile::tempdir().unwrap();
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/harness.py");
    let out = medallion_tests::output(
        Command::new(python())
            .arg(harness)
            .arg("--medallion")
            .arg(medallion_bin())
            .args(["--smoke", "--out"])
            .arg(out_dir.path()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness failed:\n{stderr}");
    let report = std::fs::read_to_string(out_dir.path().join("smoke.md")).unwrap();
    for engine in [
        "| medallion | delta |",
        "| medallion cluster, 1 executor | delta |",
        "| medallion cluster, 2 executors | delta |",
        "| duckdb | delta |",
        "| duckdb | parquet |",
        "| polars | delta |",
        "| polars | parquet |",
        "| pyspark | parquet |",
        "| sail | delta |",
        "| sail | parquet |",
        "| daft | delta |",
        "| daft | parquet |",
    ] {
        let lines: Vec<&str> = report.lines().filter(|l| l.starts_with(engine)).collect();
        assert_eq!(lines.len(), 2, "{engine} once per workload:\n{report}");
        for line in lines {
            assert!(
                line.ends_with("| yes |") || engine.contains("medallion"),
                "{line}"
            );
        }
    }
    for workload in ["## ecommerce, 3,000 orders", "## tpch, scale factor 0.01"] {
        assert!(report.contains(workload), "{workload} missing:\n{report}");
    }
    // The re-runs after a small batch: incremental silver and gold (both gold tables), gold
    // equal to a full run.
    let reruns: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| ecommerce, 3,000 orders | 1%"))
        .collect();
    assert_eq!(reruns.len(), 3, "{report}");
    for line in reruns {
        assert!(
            line.matches("| incremental |").count() == 2 && line.ends_with("| yes |"),
            "{line}"
        );
    }
    let png = std::fs::read(out_dir.path().join("smoke.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
}
