//! Sources that are not files, against real servers: PostgreSQL read in parallel ranges, each
//! run only the rows past the cursor its last bronze commit recorded.

use medallion_tests::cluster::Cluster;
use medallion_tests::postgres::{self, Postgres};
use medallion_tests::{Workspace, metric, parquet_files, run_python, table};
use serde_json::Value;

const ORDERS_TABLE: &str = "CREATE TABLE shop.orders (
    order_id bigint PRIMARY KEY,
    customer_id int NOT NULL,
    amount numeric(12,2),
    status text,
    paid boolean,
    created date,
    updated_at timestamptz NOT NULL,
    attrs jsonb
)";

/// `n` orders from `first` on, updated at one second per id from 2024-01-01 (`offset` days
/// later for a second batch); every tenth without attributes.
fn insert_orders(first: u64, n: u64, offset_days: u32) -> String {
    format!(
        "INSERT INTO shop.orders SELECT i, i % 5000, (i % 100000) / 100.0, \
         (ARRAY['new','paid','shipped'])[i % 3 + 1], i % 2 = 0, DATE '2024-01-01' + (i % 365)::int, \
         TIMESTAMPTZ '2024-01-01 00:00:00+00' + {offset_days} * interval '1 day' + i * interval '1 second', \
         CASE WHEN i % 10 = 0 THEN NULL ELSE jsonb_build_object('k', i, 's', 'a,\"b\"') END \
         FROM generate_series({first}, {}) i",
        first + n - 1
    )
}

fn spec(pg: &Postgres, partitions: u32) -> String {
    format!(
        r#"
pipeline: shop_db
lake: lake
sources:
  - name: shop_db
    postgres:
      url: {url}
      password_env: MEDALLION_SECRET_PG_PASSWORD
      table: shop.orders
      cursor: updated_at
      partition_by: order_id
      partitions: {partitions}
bronze:
  - {{ name: orders, source: shop_db }}
silver:
  - name: orders
    from: bronze.orders
    keys: [order_id]
    latest_by: updated_at
    mode: merge
    columns:
      - {{ name: order_id }}
      - {{ name: customer_id }}
      - {{ name: amount }}
      - {{ name: status }}
      - {{ name: paid }}
      - {{ name: created }}
      - {{ name: updated_at }}
      - {{ name: attrs }}
"#,
        url = pg.url()
    )
}

fn workspace(pg: &Postgres, partitions: u32) -> Workspace {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", &spec(pg, partitions));
    ws.set_env("MEDALLION_SECRET_PG_PASSWORD", postgres::PASSWORD);
    ws
}

/// The source's rows exported with PostgreSQL's own `COPY`, as CSV in the workspace.
fn copy_export(pg: &Postgres, ws: &Workspace, name: &str) -> std::path::PathBuf {
    let path = ws.path().join(name);
    pg.psql(&format!(
        "\\copy (SELECT order_id, customer_id, amount, status, paid, created, updated_at, attrs::text FROM shop.orders) TO '{}' WITH (FORMAT csv)",
        path.display()
    ));
    path
}

/// Compares a Delta table's source columns with a `COPY` export, with DuckDB's Delta reader
/// (both ways, as multisets) and Python `deltalake` (row count, distinct rows).
fn compare_with_export(table: &std::path::Path, export: &std::path::Path) -> Value {
    let code = r#"
import sys, json
sys.path.insert(0, sys.argv[1])
import delta_check, deltalake, pyarrow.compute as pc
table, export = sys.argv[2], sys.argv[3]
con = delta_check.duckdb_connection()
columns = "{'order_id': 'BIGINT', 'customer_id': 'INTEGER', 'amount': 'DECIMAL(12,2)', 'status': 'VARCHAR', 'paid': 'BOOLEAN', 'created': 'DATE', 'updated_at': 'TIMESTAMPTZ', 'attrs': 'VARCHAR'}"
con.execute(f"CREATE VIEW source AS SELECT * FROM read_csv('{export}', header = false, columns = {columns})")
con.execute(f"CREATE VIEW lake AS SELECT order_id, customer_id, amount, status, paid, created, updated_at, attrs FROM delta_scan('{table}')")
count = lambda sql: con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
arrow = deltalake.DeltaTable(table).to_pyarrow_table(columns=["order_id", "updated_at"])
print(json.dumps({
    "source_rows": count("SELECT * FROM source"),
    "duckdb_rows": count("SELECT * FROM lake"),
    "missing": count("SELECT * FROM source EXCEPT ALL SELECT * FROM lake"),
    "extra": count("SELECT * FROM lake EXCEPT ALL SELECT * FROM source"),
    "deltalake_rows": arrow.num_rows,
    "deltalake_distinct": len(set(zip(arrow["order_id"].to_pylist(), arrow["updated_at"].to_pylist()))),
}))
"#;
    let out = run_python(
        code,
        &[
            &medallion_tests::py_dir(),
            &table.as_os_str(),
            &export.as_os_str(),
        ],
    );
    serde_json::from_str(&out).unwrap()
}

/// A Delta table's rows, counted by both independent readers (which must agree).
fn row_count(table: &std::path::Path) -> u64 {
    let code = r#"
import sys, json
sys.path.insert(0, sys.argv[1])
import delta_check, deltalake
table = sys.argv[2]
duck = delta_check.duckdb_connection().execute(f"SELECT count(*) FROM delta_scan('{table}')").fetchone()[0]
print(json.dumps([deltalake.DeltaTable(table).to_pyarrow_dataset().count_rows(), duck]))
"#;
    let counts: Vec<u64> = serde_json::from_str(&run_python(
        code,
        &[&medallion_tests::py_dir(), &table.as_os_str()],
    ))
    .unwrap();
    assert_eq!(
        counts[0],
        counts[1],
        "the readers disagree on {}",
        table.display()
    );
    counts[0]
}

fn assert_same_rows(compared: &Value, rows: u64) {
    assert_eq!(compared["source_rows"], rows, "{compared}");
    for key in ["duckdb_rows", "deltalake_rows", "deltalake_distinct"] {
        assert_eq!(compared[key], rows, "{key}: {compared}");
    }
    assert_eq!(compared["missing"], 0, "{compared}");
    assert_eq!(compared["extra"], 0, "{compared}");
}

/// 1M rows in four ranges of `order_id`, equal to `COPY`'s export; then a second run reads
/// exactly the 1,000 new and 500 updated rows past the recorded cursor, and silver ends equal
/// to the table as it now is.
#[test]
fn postgres_is_read_in_parallel_ranges_then_only_past_the_committed_cursor() {
    let pg = Postgres::start();
    pg.psql(&format!("CREATE SCHEMA shop; {ORDERS_TABLE}"));
    pg.psql(&insert_orders(1, 1_000_000, 0));
    let ws = workspace(&pg, 4);

    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}\n{}", first.stderr, pg.log());
    let report = first.report();
    assert_eq!(metric(&report, "bronze.orders", "rows_written"), 1_000_000);
    let tasks = table(&report, "bronze.orders")["task_runs"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(tasks, 4, "{report:#}");
    let export = copy_export(&pg, &ws, "first.csv");
    assert_same_rows(
        &compare_with_export(&ws.path().join("lake/bronze/orders"), &export),
        1_000_000,
    );
    assert!(
        !first.stderr.contains(postgres::PASSWORD) && !first.stdout.contains(postgres::PASSWORD),
        "the password was printed"
    );
    assert_eq!(
        positions(&ws.path().join("lake/bronze/orders")),
        [serde_json::json!({"cursor": {"type": "timestamptz", "value": "2024-01-12T13:46:40Z"}})],
        "the commit records the last updated_at read"
    );

    // 1,000 new orders and 500 updated ones, all past the cursor.
    pg.psql(&insert_orders(1_000_001, 1_000, 30));
    pg.psql(
        "UPDATE shop.orders SET amount = amount + 1, updated_at = TIMESTAMPTZ '2024-03-01 00:00:00+00' + order_id * interval '1 millisecond' WHERE order_id % 2000 = 7",
    );
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let report = second.report();
    assert_eq!(metric(&report, "bronze.orders", "rows_written"), 1_500);
    assert_eq!(row_count(&ws.path().join("lake/bronze/orders")), 1_001_500);
    let now = copy_export(&pg, &ws, "second.csv");
    assert_same_rows(
        &compare_with_export(&ws.path().join("lake/silver/orders"), &now),
        1_001_000,
    );

    // Nothing new: nothing read, nothing committed.
    let third = ws.run("pipeline.yaml");
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(metric(&third.report(), "bronze.orders", "rows_written"), 0);
    assert_eq!(row_count(&ws.path().join("lake/bronze/orders")), 1_001_500);
}

/// Runs killed (SIGKILL) while their bronze tasks read and write, first into a new table,
/// then into one with a recorded cursor: after a clean run, bronze holds every row version of
/// the source once.
#[test]
fn a_killed_postgres_ingest_replays_without_duplicates_or_gaps() {
    let pg = Postgres::start();
    pg.psql(&format!("CREATE SCHEMA shop; {ORDERS_TABLE}"));
    pg.psql(&insert_orders(1, 200_000, 0));
    let ws = workspace(&pg, 3);

    assert!(
        kill_mid_ingest(&ws),
        "the first run was not killed while ingesting"
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_same_rows(
        &compare_with_export(
            &ws.path().join("lake/bronze/orders"),
            &copy_export(&pg, &ws, "first.csv"),
        ),
        200_000,
    );

    pg.psql(&insert_orders(200_001, 50_000, 30));
    assert!(
        kill_mid_ingest(&ws),
        "the second run was not killed while ingesting"
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        metric(&run.report(), "bronze.orders", "rows_written"),
        50_000
    );
    assert_same_rows(
        &compare_with_export(
            &ws.path().join("lake/bronze/orders"),
            &copy_export(&pg, &ws, "second.csv"),
        ),
        250_000,
    );
}

/// The source positions the table's commits record, oldest first, read from its log's JSON.
fn positions(table: &std::path::Path) -> Vec<Value> {
    let mut commits: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    commits
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|a| a["commitInfo"].get("medallion.source_position").cloned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Starts a run and SIGKILLs it once its bronze tasks have written a data file; whether that
/// was before the table's commit.
fn kill_mid_ingest(ws: &Workspace) -> bool {
    let bronze = ws.path().join("lake/bronze/orders");
    let commits =
        |dir: &std::path::Path| std::fs::read_dir(dir.join("_delta_log")).map_or(0, |d| d.count());
    let (before, files_before) = (commits(&bronze), parquet_files(&bronze));
    let run = ["run", "pipeline.yaml", "--executors", "2"];
    ws.killed_when(&run, || parquet_files(&bronze) > files_before) && commits(&bronze) == before
}

/// On a cluster, each range is a task on an executor, which reads the password from its own
/// environment; an executor SIGKILLed while its range is being read has the range read again
/// elsewhere, and bronze holds each row once.
#[test]
fn a_postgres_range_on_a_killed_executor_is_read_again_elsewhere() {
    let pg = Postgres::start();
    pg.psql(&format!("CREATE SCHEMA shop; {ORDERS_TABLE}"));
    pg.psql(&insert_orders(1, 300_000, 0));
    let ws = workspace(&pg, 6);
    let mut cluster = Cluster::start(&ws, 1, 3);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let victim = cluster.executor_running("bronze.orders");
    cluster.executors[victim].kill();
    let status = cluster.wait(&ws, &run_id);
    assert_eq!(
        status["state"],
        "succeeded",
        "{status:#}\n{}",
        cluster.logs()
    );
    assert!(
        cluster.coordinators[0]
            .log_text()
            .contains("executor lost under a running task"),
        "no range was being read on the killed executor:\n{}",
        cluster.logs()
    );
    assert_same_rows(
        &compare_with_export(
            &ws.path().join("lake/bronze/orders"),
            &copy_export(&pg, &ws, "export.csv"),
        ),
        300_000,
    );
    assert!(
        !cluster.logs().contains(postgres::PASSWORD),
        "the password is in a log"
    );
}

/// The example spec is valid as shipped.
#[test]
fn the_postgres_example_validates() {
    let ws = Workspace::new();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/postgres/pipeline.yaml"
    );
    let out = ws.medallion(&["validate", example]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
