//! The benchmark harness itself, at a tiny scale: both workloads run on every peer and on
//! Medallion embedded and as a local cluster, each agrees with Medallion's gold tables, and the
//! report and charts are written, with the floor, two e-commerce scales and re-runs after a
//! small batch. (The real runs are `bench/run`, not tests.)

use std::process::Command;

use medallion_tests::{medallion_bin, python};

const PEERS: [&str; 9] = [
    "| duckdb | delta |",
    "| duckdb | parquet |",
    "| polars | delta |",
    "| polars | parquet |",
    "| pyspark | parquet |",
    "| sail | delta |",
    "| sail | parquet |",
    "| daft | delta |",
    "| daft | parquet |",
];

const CLUSTERS: [&str; 2] = [
    "| medallion cluster, 1 executor | delta |",
    "| medallion cluster, 2 executors | delta |",
];

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
    let sections: Vec<&str> = report.split("\n## ").collect();
    let section = |title: &str| -> Vec<&str> {
        let text = sections
            .iter()
            .find(|s| s.starts_with(title))
            .unwrap_or_else(|| panic!("no section {title}:\n{report}"));
        text.lines().collect()
    };
    let rows = |lines: &[&str], engine: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.starts_with(engine))
            .map(|l| l.to_string())
            .collect()
    };

    // Every peer at every scale agrees with Medallion; the clusters run at the smaller
    // e-commerce scale (`--extras-up-to`) and on TPC-H.
    for (title, clusters) in [
        ("ecommerce, 1,500 orders", true),
        ("ecommerce, 3,000 orders", false),
        ("tpch, scale factor 0.01", true),
    ] {
        let lines = section(title);
        assert_eq!(rows(&lines, "| medallion | delta |").len(), 1, "{title}");
        for engine in PEERS
            .iter()
            .chain(if clusters { &CLUSTERS[..] } else { &[] })
        {
            let found = rows(&lines, engine);
            assert_eq!(found.len(), 1, "{engine} in {title}:\n{report}");
            assert!(found[0].ends_with("| yes |"), "{}", found[0]);
        }
        if !clusters {
            assert!(rows(&lines, "| medallion cluster").is_empty(), "{title}");
        }
    }

    // The floor: bronze and silver at both scales, Medallion a positive multiple of it.
    let floor = section("Against the floor");
    for scale in ["1,500", "3,000"] {
        for stage in ["bronze", "silver", "bronze + silver"] {
            let row = rows(&floor, &format!("| ecommerce, {scale} orders | {stage} |"));
            assert_eq!(row.len(), 1, "{scale} {stage}:\n{report}");
            let multiple: f64 = row[0]
                .trim_end_matches(" |")
                .rsplit("| ")
                .next()
                .and_then(|m| m.trim_end_matches('x').parse().ok())
                .unwrap_or_else(|| panic!("no multiple in {}", row[0]));
            assert!(multiple > 0.0, "{}", row[0]);
        }
    }

    // How cost grows: every engine's seconds per million orders and peak memory at both scales.
    let growth = section("How cost grows");
    for engine in PEERS.iter().chain(["| medallion | delta |"].iter()) {
        let found = rows(&growth, engine);
        assert_eq!(found.len(), 2, "{engine}: time and memory:\n{report}");
        for line in found {
            assert!(!line.contains(" - |"), "{line}");
        }
    }
    assert!(report.contains("x pool)"), "{report}");

    // The re-runs after a small batch: incremental silver and gold (both gold tables), gold
    // equal to a full run.
    let reruns: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| ecommerce, 1,500 orders | 1%"))
        .collect();
    assert_eq!(reruns.len(), 3, "{report}");
    for line in reruns {
        assert!(
            line.matches("| incremental |").count() == 2 && line.ends_with("| yes |"),
            "{line}"
        );
    }
    for chart in ["smoke.png", "smoke-scaling.png"] {
        let png = std::fs::read(out_dir.path().join(chart)).unwrap();
        assert_eq!(&png[..4], b"\x89PNG", "{chart}");
    }
}
