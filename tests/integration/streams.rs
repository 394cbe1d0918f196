//! A Kafka-protocol topic as a source, against a real broker (tansu): partitions read in
//! parallel ranges up to the offsets present at the run's start, the offsets recorded with the
//! bronze commit, a killed run replayed exactly, and micro-batches with `--continuous`.

use std::process::{Command, Stdio};
use std::time::Duration;

use medallion_tests::cluster::Cluster;
use medallion_tests::kafka::{Broker, Message};
use medallion_tests::{Workspace, medallion_bin, metric, run_python, source_positions, table};
use serde_json::Value;

const TOPIC: &str = "orders";
const PARTITIONS: i32 = 3;

fn spec(broker: &Broker, records_per_task: u64) -> String {
    format!(
        r#"
pipeline: shop_stream
lake: lake
sources:
  - name: orders
    kafka:
      brokers: ['{brokers}']
      topic: {TOPIC}
      records_per_task: {records_per_task}
bronze:
  - {{ name: orders, source: orders }}
silver:
  - name: orders
    from: bronze.orders
    keys: [id]
    mode: merge
    filters: ["id IS NOT NULL"]
    columns:
      - {{ name: id, type: bigint }}
      - {{ name: status }}
      - {{ name: amount, type: "decimal(12,2)" }}
      - {{ name: partition, expr: _partition }}
"#,
        brokers = broker.address()
    )
}

fn order(id: u64) -> Message {
    let status = ["new", "paid", "shipped"][(id % 3) as usize];
    let value = format!(
        r#"{{"id": {id}, "status": "{status}", "amount": "{}.{:02}"}}"#,
        id % 1000,
        id % 100
    );
    (Some(id.to_string()), Some(value))
}

/// Orders `ids` produced round-robin over the partitions by id.
fn produce(broker: &Broker, ids: std::ops::Range<u64>) {
    for p in 0..PARTITIONS {
        let messages: Vec<Message> = ids
            .clone()
            .filter(|id| id % PARTITIONS as u64 == p as u64)
            .map(order)
            .collect();
        broker.produce(TOPIC, p, &messages);
    }
}

/// What the bronze table holds, by DuckDB's and Python `deltalake`'s readers (which must
/// agree): rows, distinct (partition, offset) pairs, and per partition the smallest and
/// largest offset and the row count; the rows whose value was not JSON.
fn bronze(ws: &Workspace) -> Value {
    let code = r#"
import sys, json
sys.path.insert(0, sys.argv[1])
import delta_check, deltalake
table = sys.argv[2]
arrow = deltalake.DeltaTable(table).to_pyarrow_table(columns=["_partition", "_offset"])
pairs = list(zip(arrow["_partition"].to_pylist(), arrow["_offset"].to_pylist()))
con = delta_check.duckdb_connection()
q = lambda sql: con.execute(sql.replace("BRONZE", f"delta_scan('{table}')")).fetchall()
print(json.dumps({
    "rows": len(pairs),
    "distinct": len(set(pairs)),
    "duckdb_rows": q("SELECT count(*) FROM BRONZE")[0][0],
    "partitions": {str(p): [lo, hi, n] for p, lo, hi, n in q(
        "SELECT _partition, min(_offset), max(_offset), count(*) FROM BRONZE GROUP BY 1 ORDER BY 1")},
    "distinct_ids": q("SELECT count(DISTINCT id) FROM BRONZE")[0][0],
    "corrupt": q("SELECT count(*) FROM BRONZE WHERE _rescued_data LIKE '%_corrupt_record%'")[0][0],
    "topic": q("SELECT DISTINCT _topic FROM BRONZE")[0][0],
    "keys_match": q("SELECT count(*) FROM BRONZE WHERE CAST(_key AS VARCHAR) = id")[0][0],
}))
"#;
    let table = ws.path().join("lake/bronze/orders");
    let out: Value = serde_json::from_str(&run_python(
        code,
        &[&medallion_tests::py_dir(), &table.as_os_str()],
    ))
    .unwrap();
    assert_eq!(out["rows"], out["duckdb_rows"], "readers disagree: {out}");
    out
}

/// Each partition holds offsets 0..n exactly once.
fn assert_contiguous(found: &Value, per_partition: &[u64]) {
    let total: u64 = per_partition.iter().sum();
    assert_eq!(found["rows"], total, "{found}");
    assert_eq!(found["distinct"], total, "{found}");
    for (p, n) in per_partition.iter().enumerate() {
        assert_eq!(
            found["partitions"][p.to_string()],
            serde_json::json!([0, n - 1, n]),
            "partition {p}: {found}"
        );
    }
}

/// The offsets each bronze commit recorded, oldest first.
fn recorded_offsets(ws: &Workspace) -> Vec<Value> {
    source_positions(&ws.path().join("lake/bronze/orders"))
}

/// 30,000 orders over three partitions, plus three values that are not JSON: twelve tasks of
/// at most 3,333 records; bronze holds every offset once, with the bad values rescued and
/// counted; the commit records each partition's end. A second run reads exactly the 1,500
/// records produced since; a third reads nothing.
#[test]
fn a_topic_is_read_in_partition_ranges_then_only_past_the_committed_offsets() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS);
    produce(&broker, 0..30_000);
    broker.produce(TOPIC, 1, &[(None, Some("not json {".into()))]);
    broker.produce(TOPIC, 2, &[(Some("x".into()), Some("[1, 2]".into()))]);
    broker.produce(TOPIC, 2, &[(None, Some("\"text\"".into()))]);
    let ws = Workspace::new();
    // Ranges that start inside the producer's batches of 1,000 records.
    ws.write("pipeline.yaml", &spec(&broker, 3_333));

    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    let found = bronze(&ws);
    assert_eq!(
        metric(&report, "bronze.orders", "rows_written"),
        30_003,
        "{found}"
    );
    assert_eq!(metric(&report, "bronze.orders", "rows_malformed"), 3);
    // 10,000 to 10,002 records per partition, 3,333 per task: four ranges each.
    assert_eq!(table(&report, "bronze.orders")["tasks"], 12, "{report}");
    assert_contiguous(&found, &[10_000, 10_001, 10_002]);
    assert_eq!(found["distinct_ids"], 30_000, "{found}");
    assert_eq!(found["corrupt"], 3, "{found}");
    assert_eq!(found["topic"], TOPIC, "{found}");
    assert_eq!(found["keys_match"], 30_000, "{found}");
    assert_eq!(
        recorded_offsets(&ws),
        [
            serde_json::json!({ "topic": TOPIC, "offsets": { "0": 10_000, "1": 10_001, "2": 10_002 } })
        ]
    );
    assert_eq!(ws.read_table("lake/silver/orders")["num_rows"], 30_000);

    produce(&broker, 30_000..31_500);
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        metric(&run.report(), "bronze.orders", "rows_written"),
        1_500
    );
    assert_contiguous(&bronze(&ws), &[10_500, 10_501, 10_502]);
    assert_eq!(ws.read_table("lake/silver/orders")["num_rows"], 31_500);

    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(metric(&run.report(), "bronze.orders", "rows_written"), 0);
    assert_eq!(recorded_offsets(&ws).len(), 2);
}

/// A run SIGKILLed after its bronze tasks wrote files and before the commit leaves the
/// offsets where they were: the next run reads the same records once, for a new table and
/// for one with offsets recorded.
#[test]
fn a_killed_topic_ingest_replays_without_duplicates_or_gaps() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS);
    produce(&broker, 0..150_000);
    let ws = Workspace::new();
    ws.write("pipeline.yaml", &spec(&broker, 10_000));

    assert!(
        ws.killed_mid_ingest("lake/bronze/orders"),
        "the first run was not killed mid-ingest"
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let found = bronze(&ws);
    assert_contiguous(&found, &[50_000; 3]);
    assert_eq!(found["distinct_ids"], 150_000, "{found}");

    produce(&broker, 150_000..210_000);
    assert!(
        ws.killed_mid_ingest("lake/bronze/orders"),
        "the second run was not killed mid-ingest"
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        metric(&run.report(), "bronze.orders", "rows_written"),
        60_000
    );
    let found = bronze(&ws);
    assert_contiguous(&found, &[70_000; 3]);
    assert_eq!(found["distinct_ids"], 210_000, "{found}");
}

/// On a cluster the coordinator plans from the brokers' offsets and each range is a task on
/// an executor; an executor SIGKILLed while reading its range has the range read again
/// elsewhere, and bronze holds each offset once.
#[test]
fn a_topic_range_on_a_killed_executor_is_read_again_elsewhere() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS);
    produce(&broker, 0..240_000);
    let ws = Workspace::new();
    ws.write("pipeline.yaml", &spec(&broker, 20_000));
    let mut cluster = Cluster::start(&ws, 1, 3);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let victim = cluster.executor_running("bronze.orders");
    cluster.executors[victim].kill();
    cluster.wait_after_lost_task(&ws, &run_id);
    let found = bronze(&ws);
    assert_contiguous(&found, &[80_000; 3]);
    assert_eq!(found["distinct_ids"], 240_000, "{found}");
}

/// `medallion run --continuous` commits a micro-batch each interval: records produced while
/// it runs reach bronze and silver without another command, and SIGTERM ends it with
/// nothing half-committed.
#[test]
fn continuous_mode_commits_micro_batches_until_stopped() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS);
    produce(&broker, 0..3_000);
    let ws = Workspace::new();
    ws.write("pipeline.yaml", &spec(&broker, 100_000));
    let mut child = Command::new(medallion_bin())
        .args(["run", "pipeline.yaml", "--continuous", "--interval", "1s"])
        .args(["--executors", "2"])
        .current_dir(ws.path())
        .envs(ws.env())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(ws.path().join("continuous.log")).unwrap())
        .spawn()
        .expect("run medallion");
    let silver_rows = || {
        ws.has_table("lake/silver/orders")
            .then(|| ws.read_table("lake/silver/orders")["num_rows"].as_u64())
            .flatten()
    };
    let limit = Duration::from_secs(300);
    medallion_tests::cluster::wait_for("the first micro-batch", limit, || {
        silver_rows() == Some(3_000)
    });
    for batch in 1..=3 {
        produce(&broker, batch * 3_000..(batch + 1) * 3_000);
        medallion_tests::cluster::wait_for("the next micro-batch", limit, || {
            silver_rows() == Some((batch + 1) * 3_000)
        });
    }
    assert!(child.try_wait().unwrap().is_none(), "continuous run ended");
    // SIGTERM, as Kubernetes stops a pod.
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(ws.path().join("continuous.log")).unwrap();
    // 0 between micro-batches; 130 in one, which leaves its tables as they were.
    assert!(
        status.code() == Some(0) || status.code() == Some(130),
        "{status:?}: {stderr}"
    );
    let found = bronze(&ws);
    assert_contiguous(&found, &[4_000; 3]);
    assert!(
        recorded_offsets(&ws).len() >= 4,
        "one commit per micro-batch with new records"
    );
}

#[test]
fn the_kafka_example_validates() {
    let ws = Workspace::new();
    let spec = format!(
        "{}/../examples/kafka/pipeline.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = ws.medallion(&["validate", &spec]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
