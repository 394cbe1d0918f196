//! The leader as the scheduler, against real etcd, coordinators and executors: deployed
//! pipelines run on a seconds-level schedule, pause and resume, backfill intervals over
//! templated paths, and a killed leader neither skips nor doubles a scheduled run.

use std::collections::BTreeSet;
use std::time::Duration;

use medallion_tests::Workspace;
use medallion_tests::cluster::{Cluster, wait_for};
use medallion_tests::faults::FaultyExecutor;
use serde_json::Value;

/// A one-table pipeline over `data/<path>`, with `schedule` (YAML) appended.
fn spec(path: &str, schedule: &str) -> String {
    format!(
        "pipeline: sched\nlake: lake\nsources:\n  - {{ name: feed, format: json, path: \"data/{path}\" }}\n\
         bronze:\n  - {{ name: events, source: feed }}\n{schedule}"
    )
}

fn json(cluster: &Cluster, ws: &Workspace, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let out = cluster.client(ws, &args);
    assert_eq!(out.code, 0, "{args:?}: {}\n{}", out.stderr, cluster.logs());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Every run of the cluster, oldest interval first.
fn runs(cluster: &Cluster, ws: &Workspace) -> Vec<Value> {
    try_runs(cluster, ws).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
}

/// [`runs`], or why the cluster did not answer (while a new leader takes over).
fn try_runs(cluster: &Cluster, ws: &Workspace) -> Result<Vec<Value>, String> {
    let out = cluster.client(ws, &["runs", "--limit", "0", "--output", "json"]);
    if out.code != 0 {
        return Err(out.stderr);
    }
    let mut runs: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| e.to_string())?;
    runs.sort_by_key(|r| (r["interval_start_ms"].as_i64(), r["submitted_ms"].as_i64()));
    Ok(runs)
}

fn ended(run: &Value) -> bool {
    matches!(
        run["state"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

#[test]
fn a_deployed_pipeline_runs_on_its_schedule_pauses_and_resumes() {
    let ws = Workspace::new();
    ws.write("data/a.jsonl", "{\"id\": 1}\n");
    ws.write(
        "p.yaml",
        &spec("*.jsonl", "schedule: \"*/2 * * * * *\"\ntags: [demo]\n"),
    );
    let cluster = Cluster::start(&ws, 1, 1);
    let deployed = json(&cluster, &ws, &["deploy", "p.yaml"]);
    assert_eq!(
        (deployed["name"].as_str(), deployed["version"].as_u64()),
        (Some("sched"), Some(1))
    );
    assert_eq!(deployed["tags"], serde_json::json!(["demo"]));

    wait_for("two scheduled runs", Duration::from_secs(120), || {
        runs(&cluster, &ws)
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .count()
            >= 2
    });
    for run in runs(&cluster, &ws) {
        assert_eq!(run["trigger"], "scheduled", "{run:#}");
        let (start, end) = (
            run["interval_start_ms"].as_i64().unwrap(),
            run["interval_end_ms"].as_i64().unwrap(),
        );
        assert_eq!(end - start, 2000, "a 2-second interval: {run:#}");
        let submitted = run["submitted_ms"].as_i64().unwrap();
        assert!(
            submitted >= end,
            "a run starts once its interval has ended: {run:#}"
        );
        assert!(
            submitted - end < 60_000,
            "on time, even on a loaded machine: {run:#}"
        );
    }
    let listed = json(&cluster, &ws, &["pipelines"]);
    assert_eq!(listed[0]["paused"], false, "{listed:#}");
    assert!(listed[0]["next_run_ms"].as_i64().unwrap() > 0, "{listed:#}");
    // The one file was ingested once, by one of the runs: that is when bronze last changed.
    let fresh = &listed[0]["tables"][0];
    assert_eq!(
        (&fresh["table"], &fresh["version"]),
        (&serde_json::json!("bronze.events"), &serde_json::json!(0)),
        "{listed:#}"
    );
    let ids: Vec<Value> = runs(&cluster, &ws)
        .iter()
        .map(|r| r["run_id"].clone())
        .collect();
    assert!(ids.contains(&fresh["run_id"]), "{fresh:#} {ids:?}");
    let text = cluster.client(&ws, &["pipelines", "sched"]).stdout;
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("bronze.events"));
    assert!(row.is_some_and(|r| r.contains(" ago ")), "{text}");

    json(&cluster, &ws, &["pause", "sched"]);
    // A run queued just before the pause may still end; after that nothing new starts.
    wait_for("queued runs to end", Duration::from_secs(60), || {
        runs(&cluster, &ws).iter().all(ended)
    });
    let paused = runs(&cluster, &ws).len();
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(runs(&cluster, &ws).len(), paused, "no run while paused");
    assert_eq!(json(&cluster, &ws, &["pipelines"])[0]["next_run_ms"], 0);

    json(&cluster, &ws, &["resume", "sched"]);
    wait_for("a run after resuming", Duration::from_secs(60), || {
        runs(&cluster, &ws).len() > paused
    });
    // Without catch-up, the intervals missed while paused are skipped, not run.
    let after: Vec<Value> = runs(&cluster, &ws).into_iter().skip(paused).collect();
    assert!(after.len() <= 3, "missed intervals skipped: {after:#?}");

    json(&cluster, &ws, &["undeploy", "sched"]);
    wait_for("runs to end", Duration::from_secs(60), || {
        runs(&cluster, &ws).iter().all(ended)
    });
    let gone = runs(&cluster, &ws).len();
    assert_eq!(json(&cluster, &ws, &["pipelines"]), serde_json::json!([]));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(runs(&cluster, &ws).len(), gone, "no run once undeployed");
}

#[test]
fn a_backfill_runs_each_interval_over_its_own_files_once() {
    let ws = Workspace::new();
    for day in 1..=3 {
        let rows: String = (0..day)
            .map(|i| format!("{{\"id\": {}, \"day\": {day}}}\n", day * 10 + i))
            .collect();
        // The same file name every day: its identity is relative to `data/`.
        ws.write(&format!("data/2026-01-0{day}/part.jsonl"), &rows);
    }
    ws.write("data/2026-01-04/part.jsonl", "{\"id\": 99, \"day\": 4}\n");
    ws.write("p.yaml", &spec("{{ ds }}/*.jsonl", ""));
    let cluster = Cluster::start(&ws, 1, 1);
    json(&cluster, &ws, &["deploy", "p.yaml"]);
    let queued = json(
        &cluster,
        &ws,
        &[
            "backfill",
            "sched",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-03",
        ],
    );
    assert_eq!(queued["backfill_pending"], 3, "{queued:#}");
    wait_for("three backfilled runs", Duration::from_secs(180), || {
        let runs = runs(&cluster, &ws);
        runs.len() == 3 && runs.iter().all(ended)
    });
    let runs = runs(&cluster, &ws);
    let ds: Vec<&str> = runs.iter().map(|r| r["ds"].as_str().unwrap()).collect();
    assert_eq!(ds, ["2026-01-01", "2026-01-02", "2026-01-03"]);
    for run in &runs {
        assert_eq!(run["state"], "succeeded", "{run:#}\n{}", cluster.logs());
        assert!(
            run["trigger"].as_str().unwrap().starts_with("backfill "),
            "{run:#}"
        );
        let bronze = medallion_tests::table(&run["report"], "bronze.events");
        let day = run["ds"].as_str().unwrap()[8..].parse::<u64>().unwrap();
        assert_eq!(
            bronze["metrics"]["rows_written"], day,
            "each run ingests its day: {run:#}"
        );
    }
    // Triggering a day again finds its file ingested: nothing doubled.
    let again = cluster.client(
        &ws,
        &[
            "trigger",
            "sched",
            "--date",
            "2026-01-02",
            "--wait",
            "--output",
            "json",
        ],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    let again: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(
        medallion_tests::table(&again["report"], "bronze.events")["status"],
        "up_to_date"
    );

    let table = ws.read_table("lake/bronze/events");
    assert_eq!(table["readers_agree"], true, "{table:#}");
    assert_eq!(
        table["version"], 2,
        "one commit per run that ingested: {table:#}"
    );
    let mut seen: Vec<(u64, String)> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().parse().unwrap(),
                r["_source_file"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(u64, String)> = (1..=3u64)
        .flat_map(|day| (0..day).map(move |i| (day * 10 + i, format!("2026-01-0{day}/part.jsonl"))))
        .collect();
    assert_eq!(seen, expected, "day 4 was not asked for");

    // The run history any Delta reader can query: a row per run, with its interval.
    let history = ws.read_table("lake/_medallion/runs");
    assert_eq!(history["readers_agree"], true, "{history:#}");
    let mut rows: Vec<(String, String, bool)> = history["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let trigger = r["trigger"].as_str().unwrap().split(' ').next().unwrap();
            (
                r["ds"].as_str().unwrap().to_string(),
                trigger.to_string(),
                r["succeeded"] == true,
            )
        })
        .collect();
    rows.sort();
    let expected = [
        ("2026-01-01", "backfill"),
        ("2026-01-02", "backfill"),
        ("2026-01-02", "manual"),
        ("2026-01-03", "backfill"),
    ]
    .map(|(ds, t)| (ds.to_string(), t.to_string(), true));
    assert_eq!(rows, expected);
}

#[test]
fn a_killed_leader_neither_skips_nor_doubles_a_scheduled_run() {
    let ws = Workspace::new();
    ws.write("data/a.jsonl", "{\"id\": 1}\n");
    // Fifteen 2-second intervals from a start a little ahead, all caught up.
    let start = chrono::Utc::now() + chrono::Duration::seconds(6);
    let start = chrono::DateTime::from_timestamp(start.timestamp() / 2 * 2, 0).unwrap();
    let end = start + chrono::Duration::seconds(30);
    let schedule = format!(
        "schedule:\n  cron: \"*/2 * * * * *\"\n  start_date: \"{}\"\n  end_date: \"{}\"\n  catchup: true\n",
        start.to_rfc3339(),
        end.to_rfc3339()
    );
    ws.write("p.yaml", &spec("*.jsonl", &schedule));
    let mut cluster = Cluster::start(&ws, 2, 1);
    json(&cluster, &ws, &["deploy", "p.yaml"]);
    wait_for("scheduled runs", Duration::from_secs(120), || {
        runs(&cluster, &ws).iter().filter(|r| ended(r)).count() >= 2
    });
    cluster.coordinators[0].kill();
    wait_for("every interval's run", Duration::from_secs(300), || {
        let runs = try_runs(&cluster, &ws).unwrap_or_default();
        runs.len() >= 15 && runs.iter().all(ended)
    });
    std::thread::sleep(Duration::from_secs(3));
    let runs = runs(&cluster, &ws);
    let starts: Vec<i64> = runs
        .iter()
        .map(|r| r["interval_start_ms"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..15)
        .map(|i| start.timestamp_millis() + i * 2000)
        .collect();
    assert_eq!(
        starts,
        expected,
        "one run per interval, none skipped or doubled:\n{}",
        cluster.logs()
    );
    let unique: BTreeSet<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 15);
    for run in &runs {
        assert_eq!(run["state"], "succeeded", "{run:#}\n{}", cluster.logs());
    }
    let standby = cluster.coordinators[1].log_text();
    assert!(standby.contains("elected leader"), "{}", cluster.logs());
}

/// `rerun --from-failed` keeps what the run committed and runs what failed; `rerun
/// --full-refresh <table>` rebuilds that table and what reads it, nothing else. Delta
/// versions, read back with Python deltalake and DuckDB, say which tables changed.
#[test]
fn reruns_change_exactly_the_tables_they_should() {
    let ws = Workspace::new();
    ws.write(
        "data/orders/a.jsonl",
        "{\"id\": 1, \"customer\": 7, \"amount\": 5}\n{\"id\": 2, \"customer\": 8, \"amount\": 6}\n",
    );
    ws.write(
        "p.yaml",
        "pipeline: rerun\nlake: lake\nsources:\n\
         \x20 - { name: orders, format: json, path: data/orders/*.jsonl }\n\
         \x20 - { name: customers, format: json, path: data/customers/*.jsonl }\n\
         bronze:\n  - { name: orders, source: orders }\n  - { name: customers, source: customers }\n\
         silver:\n\
         \x20 - { name: orders, from: bronze.orders, keys: [id], columns: [{ name: id, type: bigint }, { name: customer, type: bigint }, { name: amount, type: bigint }] }\n\
         \x20 - { name: customers, from: bronze.customers, keys: [customer], columns: [{ name: customer, type: bigint }, { name: name }] }\n\
         gold:\n\
         \x20 - { name: totals, sql: \"SELECT sum(amount) AS total FROM silver.orders\" }\n\
         \x20 - { name: by_name, sql: \"SELECT c.name, sum(o.amount) AS total FROM silver.orders o JOIN silver.customers c ON o.customer = c.customer GROUP BY c.name\" }\n",
    );
    ws.write(
        "data/customers/a.jsonl",
        "{\"customer\": 7, \"name\": \"ann\"}\n{\"customer\": 8, \"name\": \"bob\"}\n",
    );
    // Storage trouble for one table: a file where gold.by_name's directory goes.
    let blocked = ws.write("lake/gold/by_name", "not a table");
    let cluster = Cluster::start(&ws, 1, 1);
    let version = |t: &str| ws.read_table(&format!("lake/{t}"))["version"].as_u64();
    let status = |report: &Value, t: &str| {
        medallion_tests::table(report, t)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    let first = cluster.client(&ws, &["submit", "p.yaml", "--wait", "--output", "json"]);
    let first: Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(first["state"], "failed", "{first:#}");
    assert_eq!(
        status(&first["report"], "gold.by_name"),
        "failed",
        "{first:#}"
    );
    let kept_tables = [
        "bronze/orders",
        "bronze/customers",
        "silver/orders",
        "silver/customers",
        "gold/totals",
    ];
    let committed = kept_tables.map(version);
    assert!(committed.iter().all(Option::is_some), "{committed:?}");

    // The trouble is gone, and new orders have arrived: a re-run of the failures keeps the
    // committed tables as they are (b.jsonl waits for the next run).
    std::fs::remove_file(blocked).unwrap();
    ws.write(
        "data/orders/b.jsonl",
        "{\"id\": 3, \"customer\": 7, \"amount\": 100}\n",
    );
    let run_id = first["run_id"].as_str().unwrap();
    let again = cluster.client(
        &ws,
        &[
            "rerun",
            run_id,
            "--from-failed",
            "--wait",
            "--output",
            "json",
        ],
    );
    assert_eq!(again.code, 0, "{}\n{}", again.stderr, cluster.logs());
    let again: Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(again["state"], "succeeded", "{again:#}");
    assert_eq!(again["trigger"], format!("rerun {run_id}"));
    for kept in [
        "bronze.orders",
        "bronze.customers",
        "silver.orders",
        "silver.customers",
        "gold.totals",
    ] {
        assert_eq!(status(&again["report"], kept), "kept", "{again:#}");
    }
    assert_eq!(kept_tables.map(version), committed);
    let by_name = ws.read_table("lake/gold/by_name");
    assert_eq!(by_name["readers_agree"], true);
    assert_eq!(by_name["num_rows"], 2, "{by_name:#}");
    let total = |rows: &Value, name: &str| {
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned();
        row.map(|r| r["total"].clone()).unwrap_or_default()
    };
    assert_eq!(
        total(&by_name["rows"], "ann"),
        5,
        "only a.jsonl's orders: {by_name:#}"
    );

    // Rebuild bronze.orders: it and everything downstream of it get a new version, from every
    // file (b.jsonl included), with no row doubled; the customers' tables are untouched.
    let customers = ["bronze/customers", "silver/customers"].map(version);
    let before = [
        "bronze/orders",
        "silver/orders",
        "gold/totals",
        "gold/by_name",
    ]
    .map(version);
    let again_id = again["run_id"].as_str().unwrap();
    let rebuilt = cluster.client(
        &ws,
        &[
            "rerun",
            again_id,
            "--full-refresh",
            "bronze.orders",
            "--wait",
            "--output",
            "json",
        ],
    );
    assert_eq!(rebuilt.code, 0, "{}\n{}", rebuilt.stderr, cluster.logs());
    let rebuilt: Value = serde_json::from_str(&rebuilt.stdout).unwrap();
    assert_eq!(rebuilt["state"], "succeeded", "{rebuilt:#}");
    let after = [
        "bronze/orders",
        "silver/orders",
        "gold/totals",
        "gold/by_name",
    ]
    .map(version);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            a.unwrap(),
            b.unwrap() + 1,
            "one new version each: {before:?} -> {after:?}"
        );
    }
    assert_eq!(
        ["bronze/customers", "silver/customers"].map(version),
        customers
    );
    let bronze = ws.read_table("lake/bronze/orders");
    assert_eq!(
        (
            bronze["num_rows"].as_u64(),
            bronze["readers_agree"].as_bool()
        ),
        (Some(3), Some(true)),
        "{bronze:#}"
    );
    let totals = ws.read_table("lake/gold/totals");
    assert_eq!(totals["rows"][0]["total"], 111, "{totals:#}");
    let by_name = ws.read_table("lake/gold/by_name");
    assert_eq!(total(&by_name["rows"], "ann"), 105, "{by_name:#}");

    // A table that does not exist is named.
    let wrong = cluster.client(&ws, &["rerun", again_id, "--full-refresh", "silver.nope"]);
    assert_ne!(wrong.code, 0);
    assert!(
        wrong.stderr.contains("no table 'silver.nope'"),
        "{}",
        wrong.stderr
    );
}

/// Transient task failures injected in front of the only executor: bronze waits the
/// pipeline's fixed delay between attempts, gold its own exponential one up to its cap, and the
/// run then succeeds with every row once.
#[test]
fn retry_delays_are_honoured_after_injected_task_failures() {
    let ws = Workspace::new();
    ws.write(
        "data/orders/a.jsonl",
        "{\"id\": 1, \"amount\": 5}\n{\"id\": 2, \"amount\": 6}\n{\"id\": 3, \"amount\": 7}\n",
    );
    ws.write(
        "p.yaml",
        "pipeline: retrying\nlake: lake\n\
         retries: { max_attempts: 3, delay: 3s, backoff: fixed }\n\
         sources:\n  - { name: orders, format: json, path: data/orders/*.jsonl }\n\
         bronze:\n  - { name: orders, source: orders }\n\
         silver:\n\
         \x20 - { name: orders, from: bronze.orders, keys: [id], columns: [{ name: id, type: bigint }, { name: amount, type: bigint }] }\n\
         gold:\n\
         \x20 - name: totals\n\
         \x20   sql: \"SELECT count(*) AS orders, sum(amount) AS total FROM silver.orders\"\n\
         \x20   retries: { max_attempts: 4, delay: 2s, backoff: exponential, max_delay: 5s }\n",
    );
    let mut cluster = Cluster::start(&ws, 1, 0);
    let faults = FaultyExecutor::start(&[("bronze.orders", 2), ("gold.totals", 3)]);
    let executor = cluster.add_executor_with(&["--advertise", &faults.url(), "--no-ballista"]);
    faults.forward_to(&executor);
    wait_for("the executor to register", Duration::from_secs(30), || {
        cluster.executor_ids(&ws).len() == 1
    });

    let run = json(&cluster, &ws, &["submit", "p.yaml", "--wait"]);
    assert_eq!(run["state"], "succeeded", "{run:#}\n{}", cluster.logs());
    let retries = |t: &str| medallion_tests::table(&run["report"], t)["retries"].as_u64();
    assert_eq!(
        ["bronze.orders", "silver.orders", "gold.totals"].map(retries),
        [Some(2), Some(0), Some(3)],
        "{run:#}"
    );
    let totals = ws.read_table("lake/gold/totals");
    assert_eq!(totals["readers_agree"], true, "{totals:#}");
    assert_eq!(
        totals["rows"],
        serde_json::json!([{"orders": 3, "total": 18}])
    );

    // What the stand-in saw of each task: attempt numbers, which it failed, and the pauses
    // between them. A pause is at least the delay and, on a loaded machine, not much more:
    // a fixed delay does not double, and the exponential one stops at max_delay.
    let calls = faults.calls();
    let seen = |table: &str| {
        let calls: Vec<_> = calls
            .iter()
            .filter(|c| c.task_id.starts_with(&format!("{table}#")))
            .collect();
        let attempts: Vec<(u32, bool)> = calls.iter().map(|c| (c.attempt, c.failed)).collect();
        let pauses: Vec<f64> = calls
            .windows(2)
            .map(|w| (w[1].at - w[0].at).as_secs_f64())
            .collect();
        (attempts, pauses)
    };
    let within = |pauses: &[f64], delays: &[f64]| {
        pauses.len() == delays.len()
            && pauses
                .iter()
                .zip(delays)
                .all(|(p, d)| *p >= *d && *p < d + 2.5)
    };
    let (attempts, pauses) = seen("bronze.orders");
    assert_eq!(attempts, [(1, true), (2, true), (3, false)], "{calls:#?}");
    assert!(within(&pauses, &[3.0, 3.0]), "fixed 3s: {pauses:?}");
    let (attempts, pauses) = seen("gold.totals");
    assert_eq!(
        attempts,
        [(1, true), (2, true), (3, true), (4, false)],
        "{calls:#?}"
    );
    assert!(
        within(&pauses, &[2.0, 4.0, 5.0]),
        "exponential from 2s, at most 5s: {pauses:?}"
    );
}
