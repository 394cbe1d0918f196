//! Incremental silver: after its first run, a silver table reads only the input rows
//! committed since, and the result equals computing it from all of them.

use std::time::Duration;

use medallion_tests::{Workspace, metric, table};
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
    change_data_feed: true
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
  - name: by_amount
    sql: |
      SELECT o.amount, count(*) AS orders, count(DISTINCT o.status) AS statuses,
             avg(o.order_id) AS mean_id
      FROM silver.orders o WHERE o.status <> 'placed' GROUP BY o.amount
"#;

/// One order line of a batch.
fn line(id: u64, status: &str, amount: f64, updated: Option<u32>) -> String {
    let at = match updated {
        Some(m) => format!(
            "\"2026-01-{:02}T{:02}:{:02}:00Z\"",
            1 + m / 1440,
            m / 60 % 24,
            m % 60
        ),
        None => "null".into(),
    };
    format!(
        "{{\"order_id\": {id}, \"status\": \"{status}\", \"amount\": {amount}, \"updated_at\": {at}}}\n"
    )
}

/// Batch `b` (1-based): 20 new orders (one filtered, one bogus status, one too large, one
/// sent twice), and for the previous batch's orders: later updates, stale updates that must
/// lose, a tie (the newer batch wins), a NULL time (loses), and an update to a bogus status
/// (quarantined; the last good row stays). Order ids are `b * 100000 + k`.
fn batch(b: u64) -> String {
    batch_of(b, 20)
}

/// [`batch`] with `n` new orders.
fn batch_of(b: u64, n: u64) -> String {
    let minute = |b: u64, k: u64| (b * 100 + k) as u32;
    let mut out = String::new();
    for k in 0..n {
        let id = b * 100_000 + k;
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
    out += &line(b * 100_000 + 7, "shipped", 99.0, Some(minute(b, 50)));
    if b > 1 {
        let prev = (b - 1) * 100_000;
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

const TABLES: [&str; 5] = [
    "lake/silver/orders",
    "lake/silver/orders__quarantine",
    "lake/silver/payments",
    "lake/gold/by_status",
    "lake/gold/by_amount",
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
        for t in [
            "silver.orders",
            "silver.payments",
            "gold.by_status",
            "gold.by_amount",
        ] {
            let r = refresh(&report, t);
            if b == 1 {
                assert_eq!(r["kind"], "full", "{t}: {r}");
                assert_eq!(r["reason"], "the table is new", "{t}: {r}");
            } else if t.starts_with("gold") {
                // Only the groups the changed rows of silver.orders touched were recomputed.
                assert_eq!(r["kind"], "incremental", "{t} batch {b}: {r}");
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
    // What the data says, checked by hand on the last two batches: order 400000 was updated
    // to shipped; 400002's stale update lost; 400009's bogus update was quarantined and its
    // last good row stayed; 500004 (bogus status) is in quarantine only; 500005 was dropped.
    let orders = rows(&ws, "lake/silver/orders");
    let find = |id: u64| orders.iter().find(|r| r["order_id"] == id).cloned();
    assert_eq!(find(400_000).unwrap()["status"], "shipped");
    assert_eq!(find(400_002).unwrap()["amount"], 12.0);
    assert_eq!(find(400_009).unwrap()["amount"], 19.0);
    assert_eq!(find(400_008).unwrap()["amount"], 18.0);
    assert!(find(500_004).is_none() && find(500_005).is_none() && find(500_003).is_none());
    let quarantine = rows(&ws, "lake/silver/orders__quarantine");
    let ids: Vec<u64> = quarantine
        .iter()
        .map(|r| r["order_id"].as_u64().unwrap())
        .collect();
    // Each failing row once: a new order per batch and an update per later batch.
    assert_eq!(quarantine.len(), 9, "{quarantine:#?}");
    assert!(ids.contains(&500_004) && ids.contains(&400_009), "{ids:?}");
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
    let first = orders.iter().find(|r| r["order_id"] == 100_010).unwrap();
    assert_eq!(first["amount"], 40.0, "{first}");
}

/// Runs killed (SIGKILL) at several points of incremental refreshes, then one complete run:
/// every table equals a full recompute of the same data.
#[test]
fn runs_killed_during_incremental_refreshes_lose_and_double_nothing() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    let full = Workspace::new();
    full.write("pipeline.yaml", SPEC);
    let write = |b: u64| {
        let (name, data) = (format!("data/batch-{b}.jsonl"), batch_of(b, 5000));
        ws.write(&name, &data);
        full.write(&name, &data);
    };
    write(1);
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let mut interrupted = 0;
    for (b, delay_ms) in (2..=5).zip([250, 600, 1000, 1600]) {
        write(b);
        if ws.run_killed_after("pipeline.yaml", Duration::from_millis(delay_ms)) {
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "no run was killed while it was running");
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(full.run("pipeline.yaml").code, 0);
    for rel in TABLES {
        assert_eq!(rows(&ws, rel), rows(&full, rel), "{rel}");
    }
}

/// On a cluster of two executors, incremental refreshes equal a full recompute too.
#[test]
fn incremental_refreshes_on_a_cluster_equal_a_full_recompute() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    let full = Workspace::new();
    full.write("pipeline.yaml", SPEC);
    let cluster = medallion_tests::cluster::Cluster::start(&ws, 1, 2);
    for b in 1..=3u64 {
        let (name, data) = (format!("data/batch-{b}.jsonl"), batch(b));
        ws.write(&name, &data);
        full.write(&name, &data);
        let out = cluster.client(
            &ws,
            &["submit", "pipeline.yaml", "--wait", "--output", "json"],
        );
        assert_eq!(out.code, 0, "{}\n{}", out.stderr, cluster.logs());
        let status: Value = serde_json::from_str(&out.stdout).unwrap();
        let kind = refresh(&status["report"], "silver.orders")["kind"].clone();
        assert_eq!(kind, if b == 1 { "full" } else { "incremental" });
    }
    assert_eq!(full.run("pipeline.yaml").code, 0);
    for rel in TABLES {
        assert_eq!(rows(&ws, rel), rows(&full, rel), "{rel}");
    }
    // A full refresh asked of the cluster reads everything again, to the same tables.
    let out = cluster.client(
        &ws,
        &[
            "submit",
            "pipeline.yaml",
            "--wait",
            "--output",
            "json",
            "--full-refresh",
        ],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, cluster.logs());
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    let report = &status["report"];
    assert_eq!(refresh(report, "silver.orders")["reason"], "asked for");
    let all_lines: u64 = (1..=3).map(|b| batch(b).lines().count() as u64).sum();
    assert_eq!(
        table(report, "silver.orders")["metrics"]["rows_read"],
        all_lines
    );
    for rel in TABLES {
        assert_eq!(
            rows(&ws, rel),
            rows(&full, rel),
            "{rel} after a full refresh"
        );
    }
}

/// `change_data_feed: true`: an incremental merge records updates (pre- and post-image) and
/// inserts; a gold table replaced by a full recompute records its old rows as deleted and its
/// new ones as inserted. Read back with Python deltalake's change data feed reader.
#[test]
fn silver_and_gold_record_their_changes_in_the_change_data_feed() {
    let spec = SPEC.replace(
        "  - name: by_status\n",
        "  - name: by_status\n    change_data_feed: true\n",
    );
    let ws = Workspace::new();
    ws.write("pipeline.yaml", &spec);
    for b in 1..=2 {
        ws.write(&format!("data/batch-{b}.jsonl"), &batch(b));
        let run = ws.run("pipeline.yaml");
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let changes = |rel: &str| {
        let path = ws.path().join(rel);
        let cdf = medallion_tests::python_json(&["cdf", path.to_str().unwrap(), "1"]);
        assert_eq!(
            cdf["configuration"]["delta.enableChangeDataFeed"], "true",
            "{cdf:#}"
        );
        let mut by_type = std::collections::BTreeMap::<String, Vec<Value>>::new();
        for c in cdf["changes"].as_array().unwrap() {
            assert_eq!(c["_commit_version"], 1, "{c}");
            by_type
                .entry(c["_change_type"].as_str().unwrap().to_string())
                .or_default()
                .push(c.clone());
        }
        by_type
    };
    let orders = changes("lake/silver/orders");
    let ids = |t: &str| -> Vec<u64> {
        let mut ids: Vec<u64> = orders[t]
            .iter()
            .map(|c| c["order_id"].as_u64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    // Later updates of 100000 and 100001, and the tie of 100006 (the newer row wins).
    assert_eq!(ids("update_postimage"), [100_000, 100_001, 100_006]);
    assert_eq!(ids("update_preimage"), [100_000, 100_001, 100_006]);
    // Batch 2's new orders less one filtered, one quarantined and one dropped.
    assert_eq!(ids("insert").len(), 17, "{orders:#?}");
    assert!(!orders.contains_key("delete"), "{orders:#?}");

    let gold = changes("lake/gold/by_status");
    assert_eq!(gold["delete"].len(), 3, "{gold:#?}");
    assert_eq!(gold["insert"].len(), 3, "{gold:#?}");
    assert_eq!(rows(&ws, "lake/gold/by_status").len(), 3);
}

/// A batch that changes no row (stale and equal re-sends) still records that silver read it:
/// the next run reads only what came after.
#[test]
fn rows_that_change_nothing_are_not_read_again() {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    ws.write("data/batch-1.jsonl", &batch(1));
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let before = rows(&ws, "lake/silver/orders");
    // Order 100010 again as it is, and order 100011 older than it is.
    let resent = line(100_010, "paid", 20.0, Some(110)) + &line(100_011, "paid", 1.0, Some(5));
    ws.write("data/resent.jsonl", &resent);
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    let orders = table(&report, "silver.orders");
    assert_eq!(orders["refresh"]["kind"], "incremental", "{orders:#}");
    assert_eq!(
        (
            orders["metrics"]["rows_read"].as_u64(),
            orders["metrics"]["rows_updated"].as_u64(),
            orders["metrics"]["rows_inserted"].as_u64()
        ),
        (Some(2), Some(0), Some(0)),
        "{orders:#}"
    );
    assert_eq!(rows(&ws, "lake/silver/orders"), before);
    ws.write("data/batch-2.jsonl", &batch(2));
    let next = ws.run("pipeline.yaml").report();
    assert_eq!(
        metric(&next, "silver.orders", "rows_read"),
        batch(2).lines().count() as u64
    );
}
