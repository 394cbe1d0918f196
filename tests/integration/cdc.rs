//! `mode: cdc`: a change feed with out-of-order changes, deletes and a truncate, applied as SCD
//! type 1 and type 2 tables, equals replaying the raw feed change by change (DuckDB reads it,
//! Python replays it: `delta_check.py scd-reference`), after every batch: tables without
//! truncates recompute only the keys each batch touches.

use std::time::Duration;

use medallion_tests::{Workspace, python_json, table};
use serde_json::Value;

const SPEC: &str = r#"
pipeline: cdc
lake: lake
sources:
  - { name: feed, format: json, path: data/*.jsonl }
bronze:
  - { name: changes, source: feed }
silver:
  - name: customers
    from: bronze.changes
    mode: cdc
    keys: [id]
    sequence_by: seq
    apply_as_deletes: "op = 'DELETE'"
    apply_as_truncates: "op = 'TRUNCATE'"
    except_columns: [op, seq]
    partitions: 2
    columns: &columns
      - { name: id, type: bigint }
      - { name: name }
      - { name: city }
      - { name: op }
      - { name: seq, type: bigint }
    checks:
      - { name: one_row_per_customer, check: unique, columns: [id], severity: critical }
  - name: customer_history
    from: bronze.changes
    mode: cdc
    stored_as_scd_type: 2
    keys: [id]
    sequence_by: seq
    apply_as_deletes: "op = 'DELETE'"
    except_columns: [op]
    track_history_columns: [city]
    filters: ["op <> 'TRUNCATE'"]
    partitions: 2
    columns: *columns
  - name: customers_now
    from: bronze.changes
    mode: cdc
    keys: [id]
    sequence_by: seq
    apply_as_deletes: "op = 'DELETE'"
    except_columns: [op, seq]
    filters: ["op <> 'TRUNCATE'"]
    columns: *columns
    checks:
      - { name: one_row_per_key, check: unique, columns: [id], severity: critical }
      - { name: has_name, check: not_null, column: name, severity: warning }
"#;

const CITIES: [&str; 3] = ["Oslo", "Lima", "Pune"];

fn change(id: u64, name: &str, city: &str, op: &str, seq: u64) -> String {
    format!(
        "{{\"id\": {id}, \"name\": \"{name}\", \"city\": \"{city}\", \"op\": \"{op}\", \"seq\": {seq}}}\n"
    )
}

/// Batch `b` (1-based): 20 changes over 25 customers with sequences `b * 1000 + 2j` (every
/// 9th a delete; names change every time, cities now and then, so type 2 sees tracked and
/// untracked changes); from batch 2 on, 4 late changes sequenced among the previous batch's
/// (odd sequences); batch 3 truncates at 3021, and batch 4's late changes fall on both sides
/// of it.
fn batch(b: u64) -> String {
    let mut out = String::new();
    for j in 0..20u64 {
        let id = (b * 7 + j * 3) % 25 + 1;
        let op = if j % 9 == 4 { "DELETE" } else { "UPSERT" };
        let city = CITIES[((id + b * (j % 2)) % 3) as usize];
        out += &change(id, &format!("n{b}_{j}"), city, op, b * 1000 + 2 * j);
    }
    if b > 1 {
        for j in [0u64, 5, 10, 15] {
            let id = (j * 5) % 25 + 1;
            let city = CITIES[(j % 3) as usize];
            out += &change(
                id,
                &format!("late{b}_{j}"),
                city,
                "UPSERT",
                (b - 1) * 1000 + 2 * j + 1,
            );
        }
    }
    if b == 3 {
        out +=
            "{\"id\": null, \"name\": null, \"city\": null, \"op\": \"TRUNCATE\", \"seq\": 3021}\n";
    }
    out
}

fn sorted(rows: &Value) -> Vec<Value> {
    let mut rows = rows.as_array().expect("rows").clone();
    rows.sort_by_key(|r| r.to_string());
    rows
}

/// Both tables, read with both readers, against the replayed feed.
fn assert_matches_the_feed(ws: &Workspace, after: &str) {
    let pattern = ws.path().join("data/*.jsonl");
    let reference = python_json(&["scd-reference", pattern.to_str().unwrap(), "city"]);
    for (rel, kind) in [
        ("lake/silver/customers", "scd1"),
        ("lake/silver/customer_history", "scd2"),
        ("lake/silver/customers_now", "scd1_no_truncates"),
    ] {
        let read = ws.read_table(rel);
        assert_eq!(read["readers_agree"], true, "{rel}: {read:#}");
        assert_eq!(
            sorted(&read["rows"]),
            sorted(&reference[kind]),
            "{rel} after {after}"
        );
    }
}

#[test]
fn change_feeds_become_scd_type_1_and_2_tables_equal_to_a_replay_of_the_feed() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    for b in 1..=5u64 {
        ws.write(&format!("data/batch-{b}.jsonl"), &batch(b));
        let run = ws.run("pipeline.yaml");
        assert_eq!(run.code, 0, "batch {b}: {}", run.stderr);
        let report = run.report();
        assert_eq!(table(&report, "silver.customers")["status"], "committed");
        let refresh = |t: &str| table(&report, t)["refresh"].clone();
        if b == 1 {
            assert_eq!(refresh("silver.customers")["reason"], "the table is new");
        } else {
            assert_eq!(
                refresh("silver.customers")["reason"],
                "a truncate empties every key, so a CDC table that applies them is recomputed"
            );
            for t in ["silver.customer_history", "silver.customers_now"] {
                assert_eq!(refresh(t)["kind"], "incremental", "{t}: {report:#}");
            }
            // Checks judge the table as the commit leaves it: the stored rows of other keys
            // and the recomputed rows of the touched keys.
            let checks = &table(&report, "silver.customers_now")["checks"];
            let rows = ws.read_table("lake/silver/customers_now")["rows"]
                .as_array()
                .unwrap()
                .len();
            assert_eq!(checks.as_array().unwrap().len(), 2, "{checks}");
            for check in checks.as_array().unwrap() {
                assert_eq!(check["passed"], true, "{check}");
                assert_eq!(check["total_rows"], rows as u64, "{check}");
            }
        }
        assert_matches_the_feed(&ws, &format!("batch {b}"));
    }
    // A late change of one key: only that key's changes are read again, and its history
    // gets the change at its place.
    ws.write(
        "data/batch-6.jsonl",
        &change(7, "late6", "Lima", "UPSERT", 2001),
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    let feed: String = (1..=6)
        .map(|b| std::fs::read_to_string(ws.path().join(format!("data/batch-{b}.jsonl"))).unwrap())
        .collect();
    let changes_of_7 = feed
        .lines()
        .filter(|l| l.starts_with("{\"id\": 7,"))
        .count() as u64;
    for t in ["silver.customer_history", "silver.customers_now"] {
        let history = table(&report, t);
        assert_eq!(
            history["refresh"]["kind"], "incremental",
            "{t}: {history:#}"
        );
        assert_eq!(
            history["metrics"]["rows_read"], changes_of_7,
            "{t}: {history:#}"
        );
    }
    assert_matches_the_feed(&ws, "a late change of one key");

    // What the feed says, by hand: the truncate at 3021 emptied the type 1 table, so a
    // customer last changed before it and not since is gone from it, yet keeps its history.
    let read = ws.read_table("lake/silver/customers");
    let history = ws.read_table("lake/silver/customer_history");
    let ids = |v: &Value| -> Vec<u64> {
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_u64().unwrap())
            .collect()
    };
    let (current, all) = (ids(&read), ids(&history));
    assert!(
        all.iter().any(|id| !current.contains(id)),
        "{current:?} {all:?}"
    );
    // Every closed version ends where it ends: after it starts.
    for r in history["rows"].as_array().unwrap() {
        if let Some(end) = r["__end_at"].as_u64() {
            assert!(end > r["__start_at"].as_u64().unwrap(), "{r}");
        }
    }
}

#[test]
fn runs_killed_while_they_apply_changes_lose_and_double_nothing() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    ws.write("data/batch-1.jsonl", &batch(1));
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let mut interrupted = 0;
    for (b, delay_ms) in (2..=5u64).zip([300, 700, 1200, 1800]) {
        ws.write(&format!("data/batch-{b}.jsonl"), &batch(b));
        if ws.run_killed_after("pipeline.yaml", Duration::from_millis(delay_ms)) {
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "no run was killed while it was running");
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_matches_the_feed(&ws, "killed runs and one more");
}

#[test]
fn change_feeds_on_a_two_executor_cluster_equal_a_replay_of_the_feed() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    let cluster = medallion_tests::cluster::Cluster::start(&ws, 1, 2);
    for b in 1..=4u64 {
        ws.write(&format!("data/batch-{b}.jsonl"), &batch(b));
        if b % 2 == 1 {
            continue;
        }
        let out = cluster.client(
            &ws,
            &["submit", "pipeline.yaml", "--wait", "--output", "json"],
        );
        assert_eq!(out.code, 0, "{}\n{}", out.stderr, cluster.logs());
        assert_matches_the_feed(&ws, &format!("batch {b}"));
    }
}

#[test]
fn cdc_settings_are_checked_against_the_table() {
    let ws = Workspace::new();
    let bad = SPEC
        .replace(
            "except_columns: [op, seq]",
            "except_columns: [op, seq, region]",
        )
        .replace(
            "    track_history_columns: [city]\n",
            "    track_history_columns: [city]\n    apply_as_truncates: \"op = 'TRUNCATE'\"\n",
        );
    ws.write("pipeline.yaml", &bad);
    let run = ws.medallion(&["validate", "pipeline.yaml"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("silver[0].except_columns[2]")
            && run
                .stderr
                .contains("'region' is not one of the table's columns"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("silver[1].apply_as_truncates")
            && run.stderr.contains("SCD type 1 tables only"),
        "{}",
        run.stderr
    );
}
