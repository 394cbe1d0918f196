//! Incremental silver: after its first run, a silver table reads only the input rows
//! committed since, and the result equals computing it from all of them.

use medallion_tests::{Workspace, table};
use serde_json::Value;

const SPEC: &str = r#"
pipeline: inc
lake: lake
sources:
  - { name: api, format: json, path: data/*.jsonl }
bronze:
  - { name: orders, source: api }
silver:
  - name: orders
    from: bronze.orders
    keys: [order_id]
    latest_by: to_timestamp(updated_at)
    mode: merge
    partitions: 2
    columns:
      - { name: order_id, type: bigint }
      - { name: status }
      - { name: amount, type: "decimal(10,2)" }
      - { name: updated_at, expr: to_timestamp(updated_at), type: timestamp }
    filters: ["amount > 0"]
    checks:
      - { name: status_known, check: accepted_values, column: status, values: [placed, paid, shipped], severity: warning, action: quarantine }
      - { name: not_huge, check: range, column: amount, max: 900, severity: info, action: drop }
  - name: payments
    from: bronze.orders
    columns:
      - { name: order_id, type: bigint }
      - { name: status }
      - { name: amount, type: "decimal(10,2)" }
    filters: ["status = 'paid'"]
gold:
  - name: by_status
    sql: |
      SELECT status, count(*) AS orders, sum(amount) AS total
      FROM silver.orders GROUP BY status
"#;

/// One order line of a batch.
fn line(id: u64, status: &str, amount: f64, updated: Option<u32>) -> String {
    let at = match updated {
        Some(h) => format!("\"2026-01-01T{:02}:{:02}:00Z\"", h / 60, h % 60),
        None => "null".into(),
    };
    format!(
        "{{\"order_id\": {id}, \"status\": \"{status}\", \"amount\": {amount}, \"updated_at\": {at}}}\n"
    )
}

/// Batch `b` (1-based): 20 new orders (one filtered, one bogus status, one too large, one
/// sent twice), and for the previous batch's orders: later updates, stale updates that must
/// lose, a tie (the newer batch wins), a NULL time (loses), and an update to a bogus status
/// (quarantined; the last good row stays).
fn batch(b: u64) -> String {
    let minute = |b: u64, k: u64| (b * 100 + k) as u32;
    let mut out = String::new();
    for k in 0..20 {
        let id = b * 1000 + k;
        let (status, amount) = match k {
            3 => ("paid", -5.0),
            4 => ("lost", 12.0),
            5 => ("paid", 950.0),
            _ => (
                ["placed", "paid", "shipped"][(k % 3) as usize],
                10.0 + k as f64,
            ),
        };
        out += &line(id, status, amount, Some(minute(b, k)));
    }
    out += &line(b * 1000 + 7, "shipped", 99.0, Some(minute(b, 50)));
    if b > 1 {
        let prev = (b - 1) * 1000;
        out += &line(prev, "shipped", 21.0, Some(minute(b, 60)));
        out += &line(prev + 1, "paid", 22.0, Some(minute(b, 61)));
        out += &line(prev + 2, "placed", 23.0, Some(minute(b - 2, 0)));
        out += &line(prev + 6, "paid", 24.0, Some(minute(b - 1, 6)));
        out += &line(prev + 8, "paid", 25.0, None);
        out += &line(prev + 9, "gone", 26.0, Some(minute(b, 70)));
    }
    out
}

fn refresh(report: &Value, t: &str) -> Value {
    table(report, t)["refresh"].clone()
}

/// Rows of a table, without the columns a run stamps (run id, time).
fn rows(ws: &Workspace, rel: &str) -> Vec<Value> {
    let read = ws.read_table(rel);
    assert_eq!(read["readers_agree"], true, "{rel}: {read:#}");
    let mut rows: Vec<Value> = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let o = r.as_object_mut().unwrap();
            o.remove("_quarantine_run_id");
            o.remove("_quarantined_at");
            r
        })
        .collect();
    rows.sort_by_key(|r| r.to_string());
    rows
}

const TABLES: [&str; 4] = [
    "lake/silver/orders",
    "lake/silver/orders__quarantine",
    "lake/silver/payments",
    "lake/gold/by_status",
];

#[test]
fn incremental_runs_over_five_batches_equal_a_full_recompute() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    let full = Workspace::new();
    full.write("pipeline.yaml", SPEC);
    for b in 1..=5u64 {
        let name = format!("data/batch-{b}.jsonl");
        ws.write(&name, &batch(b));
        full.write(&name, &batch(b));
        let run = ws.run("pipeline.yaml");
        assert_eq!(run.code, 0, "batch {b}: {}", run.stderr);
        let report = run.report();
        for t in ["silver.orders", "silver.payments"] {
            let r = refresh(&report, t);
            if b == 1 {
                assert_eq!(r["kind"], "full", "{t}: {r}");
                assert_eq!(r["reason"], "the table is new", "{t}: {r}");
            } else {
                assert_eq!(r["kind"], "incremental", "{t} batch {b}: {r}");
                // Only this batch's rows were read.
                let lines = batch(b).lines().count() as u64;
                assert_eq!(
                    table(&report, t)["metrics"]["rows_read"],
                    lines,
                    "{t} batch {b}"
                );
            }
        }
        // The same data computed in one run from all of it.
        let _ = std::fs::remove_dir_all(full.path().join("lake"));
        let once = full.run("pipeline.yaml");
        assert_eq!(once.code, 0, "{}", once.stderr);
        for rel in TABLES {
            assert_eq!(
                rows(&ws, rel),
                rows(&full, rel),
                "{rel} after batch {b}: incremental differs from a full recompute"
            );
        }
    }
    // What the data says, checked by hand on the last two batches: order 4000 was updated to
    // shipped; 4002's stale update lost; 4009's bogus update was quarantined and its last
    // good row stayed; 5004 (bogus status) is in quarantine only; 5005 was dropped.
    let orders = rows(&ws, "lake/silver/orders");
    let find = |id: u64| orders.iter().find(|r| r["order_id"] == id).cloned();
    assert_eq!(find(4000).unwrap()["status"], "shipped");
    assert_eq!(find(4002).unwrap()["amount"], 12.0);
    assert_eq!(find(4009).unwrap()["amount"], 19.0);
    assert_eq!(find(4008).unwrap()["amount"], 18.0);
    assert!(find(5004).is_none() && find(5005).is_none() && find(5003).is_none());
    let quarantine = rows(&ws, "lake/silver/orders__quarantine");
    let ids: Vec<u64> = quarantine
        .iter()
        .map(|r| r["order_id"].as_u64().unwrap())
        .collect();
    // Each failing row once: a new order per batch and an update per later batch.
    assert_eq!(quarantine.len(), 9, "{quarantine:#?}");
    assert!(ids.contains(&5004) && ids.contains(&4009), "{ids:?}");
}

#[test]
fn re_runs_quarantine_nothing_twice_and_a_full_refresh_replaces_the_quarantine() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    ws.write("data/batch-1.jsonl", &batch(1));
    ws.write("data/batch-2.jsonl", &batch(2));
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let first = rows(&ws, "lake/silver/orders__quarantine");
    assert_eq!(first.len(), 3, "{first:#?}");
    for _ in 0..3 {
        let run = ws.run("pipeline.yaml");
        assert_eq!(run.code, 0, "{}", run.stderr);
        let report = run.report();
        assert_eq!(table(&report, "silver.orders")["status"], "up_to_date");
        assert_eq!(rows(&ws, "lake/silver/orders__quarantine"), first);
    }
    // A full refresh screens every row again: its failures replace the earlier ones.
    let run = ws.medallion(&["run", "pipeline.yaml", "--output", "json", "--full-refresh"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    assert_eq!(refresh(&report, "silver.orders")["reason"], "asked for");
    assert_eq!(rows(&ws, "lake/silver/orders__quarantine"), first);
}

#[test]
fn a_spec_change_recomputes_in_full() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    ws.write("data/batch-1.jsonl", &batch(1));
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    ws.write("data/batch-2.jsonl", &batch(2));
    let changed = SPEC.replace(
        "{ name: amount, type: \"decimal(10,2)\" }\n      - { name: updated_at",
        "{ name: amount, expr: \"CAST(amount AS DOUBLE) * 2\", type: \"decimal(10,2)\" }\n      - { name: updated_at",
    );
    assert_ne!(changed, SPEC);
    ws.write("pipeline.yaml", &changed);
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    assert_eq!(
        refresh(&report, "silver.orders"),
        serde_json::json!({"kind": "full", "reason": "the spec changed"})
    );
    let all_lines = (batch(1) + &batch(2)).lines().count() as u64;
    assert_eq!(
        table(&report, "silver.orders")["metrics"]["rows_read"],
        all_lines
    );
    // As if the changed spec had computed everything from the start.
    let scratch = Workspace::new();
    scratch.write("pipeline.yaml", &changed);
    scratch.write("data/batch-1.jsonl", &batch(1));
    scratch.write("data/batch-2.jsonl", &batch(2));
    assert_eq!(scratch.run("pipeline.yaml").code, 0);
    for rel in TABLES {
        assert_eq!(rows(&ws, rel), rows(&scratch, rel), "{rel}");
    }
    let orders = rows(&ws, "lake/silver/orders");
    let first = orders.iter().find(|r| r["order_id"] == 1010).unwrap();
    assert_eq!(first["amount"], 40.0, "{first}");
}
