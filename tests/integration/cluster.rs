//! The cluster: etcd, coordinators and executors as separate processes on loopback, the
//! example pipeline submitted with the client, every table compared with an embedded run of
//! the same spec on the same files. Fault tests kill processes mid-run; each ends with exactly
//! the embedded run's tables.

use std::time::Duration;

use medallion_tests::cluster::{Cluster, LEASE_TTL_SECONDS, wait_for};
use medallion_tests::prometheus::http_get;
use medallion_tests::{
    EXAMPLE_QUARANTINE, EXAMPLE_TABLES, Workspace, assert_same_example_table, python_json,
    read_delta,
};
use serde_json::Value;

/// The example with `orders` orders, plus `embedded.yaml`: the same spec writing to
/// `lake-embedded`, the reference every cluster run must equal.
fn example(orders: usize, files: usize) -> Workspace {
    let (ws, _) = Workspace::example(orders, files);
    let spec = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    let status_known = "'shipped', 'delivered')\", severity: info }";
    assert!(spec.contains(status_known));
    let spec = spec.replace(
        status_known,
        "'shipped', 'delivered')\", severity: info, action: quarantine }",
    );
    ws.write("pipeline.yaml", &spec);
    ws.write(
        "embedded.yaml",
        &spec.replace("lake: ./lake ", "lake: ./lake-embedded "),
    );
    ws
}

/// Runs the embedded reference and asserts every table of the cluster's lake equals it.
fn assert_same_tables_as_embedded(ws: &Workspace, cluster: &Cluster) {
    let embedded = ws.run("embedded.yaml");
    assert_eq!(embedded.code, 0, "{}", embedded.stderr);
    for table in EXAMPLE_TABLES.iter().chain([&EXAMPLE_QUARANTINE]) {
        let ours = read_delta(ws.path().join("lake").join(table).to_str().unwrap(), None);
        let reference = read_delta(
            ws.path()
                .join("lake-embedded")
                .join(table)
                .to_str()
                .unwrap(),
            None,
        );
        assert_same_example_table(table, &ours, &reference, &cluster.logs());
    }
}

/// No table holds a data file that its log never added: the files of failed and lost task
/// dispatches were deleted. An executor that was declared lost while alive deletes its own
/// once its stopped work returns, which may be after the run ended: allow it a minute.
fn assert_no_orphan_files(ws: &Workspace, cluster: &Cluster) {
    for table in EXAMPLE_TABLES.iter().chain([&EXAMPLE_QUARANTINE]) {
        let dir = ws.path().join("lake").join(table);
        let orphans = || python_json(&["orphans", dir.to_str().unwrap()]);
        let start = std::time::Instant::now();
        let mut found = orphans();
        while found["orphans"] != Value::Array(vec![]) && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_secs(1));
            found = orphans();
        }
        assert_eq!(
            found["orphans"],
            Value::Array(vec![]),
            "{table}: {found}\n{}",
            cluster.logs()
        );
    }
}

fn assert_succeeded(status: &Value, cluster: &Cluster) {
    assert_eq!(
        status["state"],
        "succeeded",
        "run did not succeed: {status:#}\n{}",
        cluster.logs()
    );
}

#[test]
fn cluster_run_equals_embedded_run_and_lists_executors() {
    let ws = example(20_000, 8);
    let mut cluster = Cluster::start(&ws, 1, 3);

    let mut ids = cluster.executor_ids(&ws);
    ids.sort();
    assert_eq!(ids, ["executor-0", "executor-1", "executor-2"]);

    let out = cluster.client(
        &ws,
        &["submit", "pipeline.yaml", "--wait", "--output", "json"],
    );
    let status: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_succeeded(&status, &cluster);
    let run_id = status["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        status["report"]["tables"].as_array().unwrap().len(),
        EXAMPLE_TABLES.len()
    );
    // `auto` gold tables stay local below --ballista-min-input (256 MiB by default).
    for gold in ["gold.customer_360", "gold.product_performance"] {
        let report = medallion_tests::table(&status["report"], gold);
        assert_eq!(report["engine"], "local", "{report:#}");
    }
    assert_same_tables_as_embedded(&ws, &cluster);

    // Every executor did some of the work.
    for e in &cluster.executors {
        assert!(
            e.log_text().contains("task finished"),
            "{} ran no task",
            e.name
        );
    }
    // The run is listed, and its status is kept.
    let runs = cluster.client(&ws, &["runs", "--output", "json"]);
    let runs: Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs[0]["run_id"], run_id.as_str());
    assert_eq!(runs[0]["state"], "succeeded");

    // A killed executor is gone within its lease TTL.
    cluster.executors[1].kill();
    wait_for(
        "the killed executor to leave",
        Duration::from_secs(LEASE_TTL_SECONDS * 3),
        || cluster.executor_ids(&ws).len() == 2,
    );
    assert!(
        !cluster
            .executor_ids(&ws)
            .contains(&"executor-1".to_string())
    );
    // A stopped one (SIGTERM) exits cleanly and leaves at once (revoked, not expired).
    assert!(cluster.executors[2].terminate(Duration::from_secs(20)));
    wait_for(
        "the stopped executor to leave",
        Duration::from_millis(1500),
        || cluster.executor_ids(&ws) == ["executor-0"],
    );
    assert_no_orphan_files(&ws, &cluster);
}

/// Unknown runs, invalid specs and cancelling: clear errors, right exit codes.
#[test]
fn cancel_and_server_errors() {
    let ws = example(20_000, 8);
    let cluster = Cluster::start(&ws, 1, 1);
    let unknown = cluster.client(&ws, &["status", "no-such-run"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown.stderr.contains("no run 'no-such-run' (NotFound)"),
        "{}",
        unknown.stderr
    );

    // An invalid spec is refused before it reaches the cluster, naming file and line.
    let bad = ws.write(
        "bad.yaml",
        "pipeline: bad\nlake: ./lake\nsources:\n  - { name: s, format: json, path: x.jsonl }\nbronze:\n  - { name: t, source: nope }\n",
    );
    let out = cluster.client(&ws, &["submit", bad.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("bad.yaml:6"), "{}", out.stderr);

    // Cancelled while its first tasks run: it ends cancelled, and says so when watched.
    let cancelled = cluster.submit(&ws, "pipeline.yaml");
    cluster.executor_running("bronze.orders");
    let out = cluster.client(&ws, &["cancel", &cancelled]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("cancelled"), "{}", out.stdout);
    let watched = cluster.client(&ws, &["watch", &cancelled, "--output", "json"]);
    assert_eq!(watched.code, 1);
    assert!(
        watched.stdout.contains("\"state\": \"cancelled\""),
        "{}",
        watched.stdout
    );

    // The next run does the whole work, once.
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    assert_same_tables_as_embedded(&ws, &cluster);
    let again = cluster.client(&ws, &["cancel", &run_id]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("already ended"), "{}", again.stderr);
    let runs = cluster.client(&ws, &["runs", "--output", "json"]);
    let runs: Value = serde_json::from_str(&runs.stdout).unwrap();
    let states: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["succeeded", "cancelled"]);
}

/// kill -9 of an executor while it runs a bronze task, then of another while it runs a silver
/// task; an executor started late joins and gets work.
#[test]
fn executors_killed_mid_bronze_and_mid_silver_lose_nothing() {
    let ws = example(60_000, 12);
    let mut cluster = Cluster::start(&ws, 1, 3);
    let run_id = cluster.submit(&ws, "pipeline.yaml");

    let victim = cluster.executor_running("bronze.orders");
    cluster.executors[victim].kill();
    cluster.add_executor(); // starts late, must get work
    let victim = cluster.executor_running("silver.orders");
    cluster.executors[victim].kill();

    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    let coordinator = cluster.coordinators[0].log_text();
    assert!(
        coordinator.contains("executor lost under a running task"),
        "no task was running on a killed executor:\n{}",
        cluster.logs()
    );
    let late = cluster.executors.last().unwrap();
    assert!(
        late.log_text().contains("task finished"),
        "the late executor got no work"
    );
    assert_same_tables_as_embedded(&ws, &cluster);
    assert_no_orphan_files(&ws, &cluster);
}

/// An executor frozen past its lease (a loaded machine) is declared lost while still alive:
/// its tasks go to the other executor, and when it wakes it stops them and deletes what they
/// wrote, so nothing is orphaned and nothing doubled.
#[test]
fn an_executor_declared_lost_while_alive_stops_writing_and_cleans_up() {
    let ws = example(60_000, 12);
    let cluster = Cluster::start(&ws, 1, 2);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let victim = cluster.executor_running("bronze.orders");
    cluster.executors[victim].signal("STOP");
    wait_for(
        "the frozen executor to be declared lost",
        Duration::from_secs(60),
        || {
            cluster.coordinators[0]
                .log_text()
                .contains("executor lost under a running task")
        },
    );
    cluster.executors[victim].signal("CONT");
    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    wait_for(
        "the woken executor to notice",
        Duration::from_secs(60),
        || {
            cluster.executors[victim]
                .log_text()
                .contains("abandoning the running tasks")
        },
    );
    assert_same_tables_as_embedded(&ws, &cluster);
    assert_no_orphan_files(&ws, &cluster);
}

/// Two submits of one pipeline at once: the second run waits for the first's lock in etcd,
/// then finds every file ingested; nothing is doubled.
#[test]
fn two_runs_of_one_pipeline_on_a_cluster_take_turns() {
    let ws = example(20_000, 8);
    let cluster = Cluster::start(&ws, 1, 2);
    let first = cluster.submit(&ws, "pipeline.yaml");
    let second = cluster.submit(&ws, "pipeline.yaml");
    for run_id in [&first, &second] {
        let status = cluster.wait(&ws, run_id);
        assert_succeeded(&status, &cluster);
    }
    let second = cluster.status(&ws, &second);
    let bronze = medallion_tests::table(&second["report"], "bronze.orders");
    assert_eq!(bronze["status"], "up_to_date", "{second:#}");
    assert_same_tables_as_embedded(&ws, &cluster);
}

/// kill -9 of the leader coordinator mid-run: the standby takes over and finishes the run.
#[test]
fn standby_coordinator_finishes_the_run_of_a_killed_leader() {
    let ws = example(60_000, 12);
    let mut cluster = Cluster::start(&ws, 2, 2);
    assert_eq!(cluster.leader(), 0);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    cluster.executor_running("bronze.orders");
    cluster.coordinators[0].kill();

    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    let standby = cluster.coordinators[1].log_text();
    assert!(standby.contains("elected leader"), "{}", cluster.logs());
    assert!(standby.contains("resuming run"), "{}", cluster.logs());
    assert_same_tables_as_embedded(&ws, &cluster);
}

/// A client that reaches only the standby (as through a Kubernetes Service or port-forward)
/// gets the leader's answers: the standby forwards unary calls and the `watch` stream.
#[test]
fn standby_forwards_client_calls_to_the_leader() {
    let ws = example(2_000, 2);
    let cluster = Cluster::start(&ws, 2, 1);
    assert_eq!(cluster.leader(), 0);
    let standby = cluster.coordinators[1].url();

    let listed = cluster.client_at(&standby, &ws, &["executors", "--output", "json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    let submitted = cluster.client_at(
        &standby,
        &ws,
        &["submit", "pipeline.yaml", "--wait", "--output", "json"],
    );
    assert_eq!(
        submitted.code,
        0,
        "{}\n{}",
        submitted.stderr,
        cluster.logs()
    );
    let status: serde_json::Value = serde_json::from_str(&submitted.stdout).unwrap();
    assert_succeeded(&status, &cluster);
    let run_id = status["run_id"].as_str().expect("a run id");
    assert!(
        cluster.coordinators[0].log_text().contains(run_id),
        "{}",
        cluster.logs()
    );
    assert!(
        !cluster.coordinators[1].log_text().contains(run_id),
        "{}",
        cluster.logs()
    );

    let runs = cluster.client_at(&standby, &ws, &["runs"]);
    assert!(
        runs.stdout.contains(run_id),
        "{}{}",
        runs.stdout,
        runs.stderr
    );
    // The standby answered by forwarding (the client did not go to the leader itself):
    // executors, submit, watch, runs.
    let metrics = http_get(cluster.coordinators[1].metrics_port, "/metrics");
    let forwarded = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("medallion_client_calls_forwarded_total{outcome=\"forwarded\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(forwarded >= Some(4.0), "{metrics}");
    assert_same_tables_as_embedded(&ws, &cluster);
}

/// etcd restarts mid-run: the run finishes, the executors are still listed.
#[test]
fn cluster_rides_out_an_etcd_restart() {
    let ws = example(60_000, 12);
    let mut cluster = Cluster::start(&ws, 1, 2);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    cluster.executor_running("bronze.orders");
    cluster.etcd.restart(Duration::from_millis(500));

    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    wait_for(
        "executors after the restart",
        Duration::from_secs(30),
        || cluster.executor_ids(&ws).len() == 2,
    );
    assert!(
        cluster.coordinators[0].alive(),
        "the leader died:\n{}",
        cluster.logs()
    );
    assert_same_tables_as_embedded(&ws, &cluster);
}

/// Gold on Ballista: customer_360 forced onto Ballista, product_performance left to `auto`
/// with a size threshold its inputs pass; both run across the executors (each executor's
/// Ballista executor ran some of the queries' tasks) and equal the local DataFusion result of
/// an embedded run.
#[test]
fn gold_on_ballista_equals_local_datafusion() {
    let ws = example(20_000, 8);
    let spec = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    let on_ballista = spec.replace(
        "    checks:\n      - { name: one_row_per_customer",
        "    engine: ballista\n    checks:\n      - { name: one_row_per_customer",
    );
    assert_eq!(on_ballista.matches("engine: ballista").count(), 1);
    ws.write("pipeline.yaml", &fail_hung_attempts(&on_ballista));
    let cluster = Cluster::start_with(&ws, 1, 3, &["--ballista-min-input", "1KiB"]);

    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    for gold in ["gold.customer_360", "gold.product_performance"] {
        let report = medallion_tests::table(&status["report"], gold);
        assert_eq!(report["engine"], "ballista", "{report:#}");
    }
    let ran_ballista_tasks = cluster
        .executors
        .iter()
        .filter(|e| e.log_text().contains("Received task"))
        .count();
    assert!(
        ran_ballista_tasks >= 2,
        "Ballista tasks ran on {ran_ballista_tasks} executors:\n{}",
        cluster.logs()
    );
    assert_same_tables_as_embedded(&ws, &cluster);
}

/// TPC-H gold tables (Q1, Q3, Q5, Q6, Q10: aggregates and multi-way joins) on Ballista across
/// three executors equal local DataFusion's in an embedded run.
#[test]
fn tpch_gold_on_ballista_equals_local_datafusion() {
    let ws = Workspace::new();
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tpch/pipeline.yaml"),
    )
    .unwrap();
    ws.write(
        "pipeline.yaml",
        &fail_hung_attempts(&spec.replace("\n    sql: |", "\n    engine: ballista\n    sql: |")),
    );
    ws.write(
        "embedded.yaml",
        &spec.replace("lake: ./lake\n", "lake: ./lake-embedded\n"),
    );
    let generated = ws.medallion(&["generate", "data", "--dataset", "tpch", "--scale", "0.01"]);
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    let cluster = Cluster::start(&ws, 1, 3);

    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    let embedded = ws.run("embedded.yaml");
    assert_eq!(embedded.code, 0, "{}", embedded.stderr);
    for gold in [
        "q1_pricing_summary",
        "q3_shipping_priority",
        "q5_local_supplier_volume",
        "q6_forecast_revenue",
        "q10_returned_items",
    ] {
        let report = medallion_tests::table(&status["report"], &format!("gold.{gold}"));
        assert_eq!(report["engine"], "ballista", "{report:#}");
        let ours = ws.read_table(&format!("lake/gold/{gold}"));
        let local = ws.read_table(&format!("lake-embedded/gold/{gold}"));
        assert!(ours["num_rows"].as_u64().unwrap() > 0, "{gold} is empty");
        assert_rows_equal_within(&ours["rows"], &local["rows"], gold);
    }
}

/// A spec whose task attempts end after 5 minutes (`timeouts.task`). A CI run once hung (no
/// progress for over an hour) in two of these Ballista tests at the same time, cause not
/// found: a gold query that hangs on Ballista then fails its run, naming the task and the
/// timeout, instead of stalling the test run.
fn fail_hung_attempts(spec: &str) -> String {
    assert!(spec.contains("\nsources:") && !spec.contains("timeouts:"));
    spec.replacen("\nsources:", "\ntimeouts: { task: 5m }\nsources:", 1)
}

/// Row lists (sorted the same way by the reader) equal, numbers to 1e-9 relative: a
/// distributed aggregate adds its partial sums in another order.
fn assert_rows_equal_within(ours: &Value, reference: &Value, what: &str) {
    let (a, b) = (ours.as_array().unwrap(), reference.as_array().unwrap());
    assert_eq!(a.len(), b.len(), "{what}: row counts differ");
    for (x, y) in a.iter().zip(b) {
        for (column, v) in x.as_object().unwrap() {
            let w = &y[column];
            let close = match (v.as_f64(), w.as_f64()) {
                (Some(p), Some(q)) => (p - q).abs() <= 1e-9 * p.abs().max(q.abs()).max(1.0),
                _ => v == w,
            };
            assert!(close, "{what}: column {column}: {v} vs {w}\n{x}\n{y}");
        }
    }
}

/// kill -9 of an executor while a Ballista gold query runs: the query or the gold task runs
/// again, and the run ends with the embedded run's tables.
#[test]
fn executor_killed_during_a_ballista_query_loses_nothing() {
    let ws = example(60_000, 12);
    let spec = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    ws.write(
        "pipeline.yaml",
        &fail_hung_attempts(&spec.replace(
            "    checks:\n      - { name: one_row_per_",
            "    engine: ballista\n    checks:\n      - { name: one_row_per_",
        )),
    );
    let mut cluster = Cluster::start(&ws, 1, 3);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let mut victim = None;
    wait_for("a Ballista task", Duration::from_secs(180), || {
        victim = cluster
            .executors
            .iter()
            .position(|e| e.log_text().contains("Received task"));
        victim.is_some()
    });
    cluster.executors[victim.unwrap()].kill();

    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    for gold in ["gold.customer_360", "gold.product_performance"] {
        let report = medallion_tests::table(&status["report"], gold);
        assert_eq!(report["engine"], "ballista", "{report:#}");
    }
    assert_same_tables_as_embedded(&ws, &cluster);
    // The scheduler did lose a Ballista executor (its tasks go to the others).
    let killed = format!(
        "ACTIVE executor executor-{} heartbeat timed out",
        victim.unwrap()
    );
    wait_for(
        "the scheduler to expire the killed executor",
        Duration::from_secs(60),
        || cluster.coordinators[0].log_text().contains(&killed),
    );
}

/// The Ballista scheduler lives in the leader: after the leader is killed, the executors'
/// Ballista executors reach the new leader's scheduler, and the next run's gold tables run on
/// Ballista across them again.
#[test]
fn ballista_follows_a_new_leader() {
    let ws = example(20_000, 8);
    // Without its change data feed, silver.orders cannot tell gold which groups changed:
    // gold is recomputed in full, so on Ballista, every run.
    let spec = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    let without_feed = spec.replace("    change_data_feed: true\n", "");
    assert_ne!(spec, without_feed);
    ws.write("pipeline.yaml", &fail_hung_attempts(&without_feed));
    let mut cluster = Cluster::start_with(&ws, 2, 2, &["--ballista-min-input", "1KiB"]);
    let first = cluster.submit(&ws, "pipeline.yaml");
    assert_succeeded(&cluster.wait(&ws, &first), &cluster);
    let ballista_tasks = |cluster: &Cluster| -> usize {
        cluster
            .executors
            .iter()
            .map(|e| e.log_text().matches("Received task").count())
            .sum()
    };
    let before = ballista_tasks(&cluster);
    assert!(before > 0, "{}", cluster.logs());

    cluster.coordinators[0].kill();
    wait_for("the standby to lead", Duration::from_secs(60), || {
        cluster.coordinators[1]
            .log_text()
            .contains("elected leader")
    });
    // New orders, so that silver and gold have work to do.
    ws.write(
        "data/orders/late.jsonl",
        r#"{"order_id": 99000001, "customer_id": 10, "product_id": 5, "quantity": 2, "amount": 30.5, "status": "paid", "email": "Late@X.com", "created_at": "2024-03-01T10:00:00Z", "updated_at": "2024-03-01T10:00:00Z"}
"#,
    );
    let second = cluster.submit(&ws, "pipeline.yaml");
    let status = cluster.wait(&ws, &second);
    assert_succeeded(&status, &cluster);
    for gold in ["gold.customer_360", "gold.product_performance"] {
        let report = medallion_tests::table(&status["report"], gold);
        assert_eq!(report["engine"], "ballista", "{report:#}");
    }
    assert!(
        ballista_tasks(&cluster) > before,
        "no Ballista task ran after the failover:\n{}",
        cluster.logs()
    );
    assert_same_tables_as_embedded(&ws, &cluster);
}

/// A gold query whose polls each hold the executor's runtime for seconds (`range` and
/// `unnest` build a partition's rows in one batch) must not cost the executor its
/// registration: its lease is kept alive from a thread of its own, not behind the query.
#[test]
fn an_executor_busy_in_long_polls_keeps_its_registration() {
    const VALUES_PER_ORDER: u64 = 6_000_000;
    let ws = crate::fixture::shop();
    ws.write(
        "pipeline.yaml",
        &format!(
            "{}  - name: busy\n    sql: SELECT count(*) AS n FROM (SELECT unnest(range({VALUES_PER_ORDER})) \
             AS v FROM silver.orders) x\n",
            crate::fixture::SPEC
        ),
    );
    let cluster = Cluster::start(&ws, 1, 1);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let status = cluster.wait(&ws, &run_id);
    assert_succeeded(&status, &cluster);
    let lake = ws.path().join("lake");
    let orders = read_delta(lake.join("silver/orders").to_str().unwrap(), None);
    let busy = read_delta(lake.join("gold/busy").to_str().unwrap(), None);
    let expected = orders["num_rows"].as_u64().unwrap() * VALUES_PER_ORDER;
    assert_eq!(busy["rows"][0]["n"], expected, "{busy}");
    let logs = cluster.logs();
    assert!(!logs.contains("etcd lease expired"), "{logs}");
    assert!(!logs.contains("executor left"), "{logs}");
}
