//! Observability: a real Prometheus scrapes a running coordinator and its executors while the
//! example pipeline runs, and what it stored must equal what the run wrote; JSON log lines
//! carry the run, pipeline, stage, table and task they are about.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use medallion_tests::Workspace;
use medallion_tests::cluster::{Cluster, wait_for};
use medallion_tests::prometheus::{Prometheus, http_get};
use serde_json::Value;

#[test]
fn prometheus_counts_the_rows_written_per_layer() {
    let (ws, _) = Workspace::example(20_000, 8);
    let cluster = Cluster::start(&ws, 1, 2);
    let target = |p: &medallion_tests::cluster::Proc| format!("127.0.0.1:{}", p.metrics_port);
    let prometheus = Prometheus::start(
        ws.path(),
        &[
            ("coordinator", vec![target(&cluster.coordinators[0])]),
            ("executor", cluster.executors.iter().map(target).collect()),
        ],
    );

    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let status = cluster.wait(&ws, &run_id);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    // What the run committed, per layer, from its own report.
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for t in status["report"]["tables"].as_array().unwrap() {
        assert_eq!(t["status"], "committed", "{t:#}");
        let layer = t["table"].as_str().unwrap().split('.').next().unwrap();
        *expected.entry(layer.to_string()).or_default() +=
            t["metrics"]["rows_written"].as_f64().unwrap();
    }
    let expected: Vec<(String, f64)> = expected.into_iter().collect();
    assert_eq!(expected.len(), 3);

    let per_layer = || {
        prometheus.values_by(
            "sum by (layer) (pipeline_records_processed_total{job=\"coordinator\"})",
            "layer",
        )
    };
    wait_for(
        "Prometheus to scrape the run",
        Duration::from_secs(30),
        || per_layer() == expected,
    );

    // Bronze is labelled by the source it ingests.
    let bronze = prometheus.values_by(
        "pipeline_records_processed_total{layer=\"bronze\"}",
        "source",
    );
    let sources: Vec<&str> = bronze.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sources, ["catalog", "crm", "ecommerce_api"]);
    // One processing time observed per committed table.
    let observed = prometheus.query("sum(pipeline_processing_seconds_count)");
    assert_eq!(observed[0]["value"][1], "8");
    // Freshness keeps growing after the commit, scrape after scrape.
    let freshness = |t: &str| {
        prometheus
            .values_by(
                &format!("pipeline_data_freshness_seconds{{source=\"{t}\"}}"),
                "source",
            )
            .first()
            .map(|(_, v)| *v)
            .unwrap_or(f64::NAN)
    };
    let before = freshness("customer_360");
    std::thread::sleep(Duration::from_millis(2500));
    let after = freshness("customer_360");
    assert!(
        after > before && after >= 2.0,
        "freshness {before} then {after}"
    );

    assert_eq!(
        prometheus.values_by("medallion_runs_total", "status"),
        [("succeeded".to_string(), 1.0)]
    );
    // What the alerts read: one leader, the pipeline's last success.
    let leaders = prometheus.values_by("sum(medallion_coordinator_leader)", "");
    assert_eq!(leaders, [(String::new(), 1.0)]);
    let success = prometheus.values_by(
        "medallion_pipeline_last_success_timestamp_seconds",
        "pipeline",
    );
    assert_eq!(success.len(), 1, "{success:?}");
    assert!(success[0].1 > 1.7e9, "{success:?}");
    assert_eq!(
        prometheus.values_by("medallion_executors_alive", "job"),
        [("coordinator".to_string(), 2.0)]
    );
    // Both executors ran tasks, and each one's own counter says so.
    let ran = prometheus.values_by(
        "sum by (instance) (medallion_executor_tasks_total{outcome=\"succeeded\"})",
        "instance",
    );
    assert_eq!(ran.len(), 2, "{ran:?}");
    assert!(ran.iter().all(|(_, n)| *n > 0.0), "{ran:?}");
    let written = prometheus.values_by("sum(pipeline_bytes_total{direction=\"written\"})", "");
    assert!(written[0].1 > 0.0, "{written:?}");

    // The endpoint itself, as any scraper sees it.
    let text = http_get(cluster.coordinators[0].metrics_port, "/metrics");
    assert!(
        text.contains("# TYPE pipeline_records_processed_total counter"),
        "{text}"
    );
    // The executors log JSON (stderr is not a terminal): every task line names its run.
    let lines: Vec<String> = cluster
        .executors
        .iter()
        .flat_map(|e| e.log_text().lines().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let tables = assert_task_lines_name_the_run(&lines, &run_id);
    assert_eq!(tables.len(), 8, "{tables:?}");
}

/// Checks every log line inside a task span carries the run id, pipeline, stage, table and
/// task id; returns the tables those lines are about.
fn assert_task_lines_name_the_run(lines: &[String], run_id: &str) -> BTreeSet<String> {
    let mut tables = BTreeSet::new();
    for line in lines {
        let Ok(parsed) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(task) = parsed["spans"].as_array().and_then(|spans| {
            spans
                .iter()
                .rev()
                .find(|s| s["name"] == "task" && s.get("table").is_some())
        }) else {
            continue;
        };
        assert_eq!(task["run_id"], run_id, "{line}");
        assert_eq!(task["pipeline"], "ecommerce", "{line}");
        let table = task["table"].as_str().unwrap();
        assert_eq!(task["stage"], table.split('.').next().unwrap(), "{line}");
        assert!(
            task["task_id"].as_str().unwrap().starts_with(table),
            "{line}"
        );
        tables.insert(table.to_string());
    }
    tables
}

/// An embedded run with `--log-format json`: every line of a task's work, the coordinator's
/// and the executor's (one process), carries the run id.
#[test]
fn json_log_lines_name_run_and_task() {
    let (ws, _) = Workspace::example(2_000, 4);
    let out = medallion_tests::output(
        std::process::Command::new(medallion_tests::medallion_bin())
            .args([
                "run",
                "pipeline.yaml",
                "--output",
                "json",
                "--log-format",
                "json",
            ])
            .current_dir(ws.path())
            .env("MEDALLION_LOG", "info"),
    );
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run_id = report["run_id"].as_str().unwrap();
    // Log lines, not the client's live progress lines that share stderr.
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_string)
        .collect();
    assert!(lines.len() > 20, "{lines:#?}");
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        // Inside the run, the run id is on the line through its span.
        if let Some(spans) = parsed["spans"].as_array().filter(|s| !s.is_empty()) {
            assert_eq!(spans[0]["run_id"], run_id, "{line}");
        }
    }
    let tables = assert_task_lines_name_the_run(&lines, run_id);
    assert_eq!(tables.len(), 8, "{tables:?}");
}

/// A task's time in the run report is the time it ran, not the time it waited for a task
/// slot: with one slot, bronze.orders' four tasks run one after another, so their times add
/// up to no more than the table's, and none starts before the one before it ended. (Timed
/// from their dispatch, they all started at 0 and each one's time held the ones before it.)
#[test]
fn report_times_tasks_from_when_they_got_a_slot() {
    // Tasks long enough (~0.5 s each in a debug build) that the slack below cannot hide the
    // overlap of tasks timed from their dispatch.
    let (ws, _) = Workspace::example(160_000, 8);
    let out = ws.medallion(&[
        "run",
        "pipeline.yaml",
        "--output",
        "json",
        "--executors",
        "1",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    let orders = medallion_tests::table(&report, "bronze.orders");
    let number = |v: &Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a number: {orders:#}"))
    };
    let mut runs: Vec<(u64, u64)> = orders["task_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (number(&t["started_ms"]), number(&t["duration_ms"])))
        .collect();
    assert_eq!(runs.len(), 4, "{orders:#}");
    runs.sort();
    // Milliseconds are rounded down, and the coordinator hears of a task's end a moment
    // after the next task took the slot (longer on a loaded machine).
    let slack = 100;
    for pair in runs.windows(2) {
        let (before, next) = (pair[0], pair[1]);
        assert!(
            next.0 + slack >= before.0 + before.1,
            "overlapping tasks: {runs:?}"
        );
    }
    let ran: u64 = runs.iter().map(|r| r.1).sum();
    assert!(ran <= number(&orders["duration_ms"]) + slack, "{orders:#}");
    // The table's run_ms adds up its tasks' times.
    let run_ms = number(&orders["metrics"]["run_ms"]);
    assert!(
        (ran..=ran + 4).contains(&run_ms),
        "{run_ms} against {runs:?}"
    );
}

/// The shipped alert rules are valid, and their `promtool test rules` cases pass; a rule
/// changed to fire too early makes those cases fail, so they test something.
#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let k8s = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let rules = k8s.join("helm/medallion/files/medallion.rules.yaml");
    let promtool = |args: &[&std::ffi::OsStr], dir: &std::path::Path| {
        let out = medallion_tests::output(
            std::process::Command::new("promtool")
                .args(args)
                .current_dir(dir),
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = promtool(
        &["check".as_ref(), "rules".as_ref(), rules.as_os_str()],
        &k8s,
    );
    assert!(ok && text.contains("5 rules found"), "{text}");
    let tests = k8s.join("tests");
    let (ok, text) = promtool(
        &[
            "test".as_ref(),
            "rules".as_ref(),
            "alerts.test.yaml".as_ref(),
        ],
        &tests,
    );
    assert!(ok, "{text}");

    let ws = medallion_tests::Workspace::new();
    let broken = std::fs::read_to_string(&rules)
        .unwrap()
        .replace("> 2 * max", "> 1 * max");
    ws.write("helm/medallion/files/medallion.rules.yaml", &broken);
    let cases = std::fs::read_to_string(tests.join("alerts.test.yaml")).unwrap();
    ws.write("tests/alerts.test.yaml", &cases);
    let (ok, text) = promtool(
        &[
            "test".as_ref(),
            "rules".as_ref(),
            "alerts.test.yaml".as_ref(),
        ],
        &ws.path().join("tests"),
    );
    assert!(!ok && text.contains("MedallionPipelineStale"), "{text}");
}
