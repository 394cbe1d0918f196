//! Nothing lost, nothing doubled: a run killed at any point, then run again.

use std::time::Duration;

use medallion_tests::Workspace;

/// Kills runs at several points; after a final clean run every table holds each row once.
#[test]
fn killed_runs_neither_lose_nor_duplicate_rows() {
    let (ws, lines) = Workspace::example(60_000, 12);

    let mut interrupted = 0;
    for delay_ms in [400, 900, 1500, 2500] {
        if ws.run_killed_after("pipeline.yaml", Duration::from_millis(delay_ms)) {
            interrupted += 1;
        }
    }
    assert!(
        interrupted > 0,
        "no run was killed while it was still running"
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);

    let bronze = ws.read_table("lake/bronze/orders");
    assert_eq!(bronze["readers_agree"], true);
    assert_eq!(
        bronze["num_rows"].as_u64().unwrap(),
        lines,
        "every line exactly once"
    );
    let files: std::collections::BTreeMap<String, usize> = bronze["rows"]
        .as_array()
        .unwrap()
        .iter()
        .fold(Default::default(), |mut m, r| {
            *m.entry(r["_ingested_at"].to_string() + r["_source_file"].as_str().unwrap())
                .or_default() += 1;
            m
        });
    let distinct_files: std::collections::BTreeSet<_> = bronze["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["_source_file"].to_string())
        .collect();
    assert_eq!(
        files.len(),
        distinct_files.len(),
        "a file was ingested by more than one run"
    );

    let reference =
        medallion_tests::python_json(&["gold-reference", ws.path().join("data").to_str().unwrap()]);
    let silver = ws.read_table("lake/silver/orders");
    assert_eq!(silver["num_rows"], reference["silver_orders_rows"]);
}
