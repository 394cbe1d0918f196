//! Sources that are not files, against real servers: PostgreSQL read in parallel ranges, each
//! run only the rows past the cursor its last bronze commit recorded.

use medallion_tests::cluster::Cluster;
use medallion_tests::postgres::{self, Postgres};
use medallion_tests::{Workspace, metric, run_python, source_positions, table};
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
        source_positions(&ws.path().join("lake/bronze/orders")),
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
        ws.killed_mid_ingest("lake/bronze/orders"),
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
        ws.killed_mid_ingest("lake/bronze/orders"),
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
    cluster.wait_after_lost_task(&ws, &run_id);
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

/// A query without a cursor is read whole each run and replaces bronze's rows: after rows
/// are deleted and changed at the source, bronze equals the query's result again.
#[test]
fn a_postgres_query_without_a_cursor_replaces_bronze_with_its_rows() {
    let pg = Postgres::start();
    pg.psql(&format!("CREATE SCHEMA shop; {ORDERS_TABLE}"));
    pg.psql(&insert_orders(1, 2_000, 0));
    let ws = workspace(&pg, 2);
    let spec = spec(&pg, 2)
        .replace(
            "      table: shop.orders\n      cursor: updated_at\n",
            "      query: SELECT * FROM shop.orders WHERE status <> 'new'\n",
        )
        .replace("silver:", "unused_silver:");
    let spec = spec.split("unused_silver:").next().unwrap().to_string();
    ws.write("pipeline.yaml", &spec);
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let not_new = |pg: &Postgres| -> u64 {
        pg.psql("SELECT count(*) FROM shop.orders WHERE status <> 'new'")
            .parse()
            .unwrap()
    };
    assert_eq!(
        row_count(&ws.path().join("lake/bronze/orders")),
        not_new(&pg)
    );
    pg.psql("DELETE FROM shop.orders WHERE order_id <= 100; UPDATE shop.orders SET status = 'new' WHERE order_id > 1900");
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let report = second.report();
    let refresh = &table(&report, "bronze.orders")["refresh"];
    assert!(
        refresh.to_string().contains("without a cursor"),
        "{refresh}"
    );
    assert_eq!(
        row_count(&ws.path().join("lake/bronze/orders")),
        not_new(&pg)
    );
    assert!(source_positions(&ws.path().join("lake/bronze/orders")).is_empty());

    // A query that would write (a sequence's nextval) runs read-only, and fails.
    pg.psql("CREATE SEQUENCE shop.s");
    ws.write(
        "pipeline.yaml",
        &spec.replace("SELECT * FROM", "SELECT *, nextval('shop.s') AS n FROM"),
    );
    let writing = ws.run("pipeline.yaml");
    assert_ne!(writing.code, 0);
    assert!(
        writing.stderr.contains("read-only transaction"),
        "{}",
        writing.stderr
    );
    assert_eq!(pg.psql("SELECT is_called FROM shop.s"), "f", "nextval ran");
}

/// The example specs are valid as shipped.
#[test]
fn the_source_examples_validate() {
    let ws = Workspace::new();
    for example in ["postgres", "http"] {
        let spec = format!(
            "{}/../examples/{example}/pipeline.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = ws.medallion(&["validate", &spec]);
        assert_eq!(out.code, 0, "{example}: {}{}", out.stdout, out.stderr);
    }
}

const API_TOKEN: &str = "api-token-for-tests";

/// The tests' JSON API (`tests/py/http_api.py`) on a free port, with its records file and
/// request log.
struct Api {
    proc: medallion_tests::cluster::Proc,
    records: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Api {
    fn start(ws: &Workspace, delay_ms: u64) -> Self {
        let port = medallion_tests::cluster::free_port();
        let (records, log) = (
            ws.path().join("api-records.jsonl"),
            ws.path().join("api-requests.log"),
        );
        std::fs::write(&records, "").unwrap();
        let proc = medallion_tests::cluster::Proc::spawn(
            "api",
            port,
            ws.path().join("api.log"),
            std::process::Command::new(medallion_tests::python())
                .arg(medallion_tests::py_dir().join("http_api.py"))
                .arg(port.to_string())
                .args([&records, &log])
                .args([API_TOKEN, &delay_ms.to_string()]),
        );
        medallion_tests::cluster::wait_for("the API", std::time::Duration::from_secs(30), || {
            proc.listening()
        });
        Self { proc, records, log }
    }

    /// Adds records `ids`, updated at `second` seconds past 2024-01-01 plus their id.
    fn add(&self, ids: std::ops::Range<u64>, second: u64) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.records)
            .unwrap();
        for id in ids {
            let at =
                chrono::DateTime::from_timestamp(1_704_067_200 + (second + id) as i64, 0).unwrap();
            let status = ["new", "paid"][(id % 2) as usize];
            let record = serde_json::json!({
                "id": id,
                "updated_at": at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "amount": id as f64 / 4.0,
                "status": status,
                "tags": ["a", id.to_string()],
            });
            writeln!(file, "{record}").unwrap();
        }
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn spec(&self) -> String {
        format!(
            r#"
pipeline: shop_api
lake: lake
sources:
  - name: shop_api
    http:
      url: http://127.0.0.1:{port}/orders
      params: {{ per_page: "100" }}
      auth: {{ prefix: "Bearer ", token_env: MEDALLION_SECRET_API_TOKEN }}
      records: /data/items
      pagination: {{ style: page, param: page }}
      since: {{ param: updated_since, field: updated_at }}
      requests_per_second: 50
bronze:
  - {{ name: orders, source: shop_api }}
"#,
            port = self.proc.port
        )
    }
}

fn api_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.set_env("MEDALLION_SECRET_API_TOKEN", API_TOKEN);
    ws
}

/// (id, updated_at) of every bronze row, counted: (rows, distinct pairs), by DuckDB's and
/// Python `deltalake`'s readers (which must agree).
fn api_rows(ws: &Workspace) -> (u64, u64) {
    let code = r#"
import sys, json
sys.path.insert(0, sys.argv[1])
import delta_check, deltalake
table = sys.argv[2]
arrow = deltalake.DeltaTable(table).to_pyarrow_table(columns=["id", "updated_at"])
pairs = list(zip(arrow["id"].to_pylist(), arrow["updated_at"].to_pylist()))
duck = delta_check.duckdb_connection().execute(
    f"SELECT count(*), count(DISTINCT (id, updated_at)) FROM delta_scan('{table}')").fetchone()
print(json.dumps([len(pairs), len(set(pairs)), duck[0], duck[1]]))
"#;
    let table = ws.path().join("lake/bronze/orders");
    let counts: Vec<u64> = serde_json::from_str(&run_python(
        code,
        &[&medallion_tests::py_dir(), &table.as_os_str()],
    ))
    .unwrap();
    assert_eq!(
        (counts[0], counts[1]),
        (counts[2], counts[3]),
        "readers disagree"
    );
    (counts[0], counts[1])
}

/// Pages of 100 through a 429 (honouring its Retry-After) and a 500, with the token from the
/// environment; a second run asks only for the records updated since the first read, and
/// ingests exactly the 120 new and 30 updated ones; a third finds nothing.
#[test]
fn an_http_api_is_read_page_by_page_through_429_and_500_then_only_since_the_last_commit() {
    let ws = api_workspace();
    let api = Api::start(&ws, 0);
    api.add(1..1051, 0);
    ws.write("pipeline.yaml", &api.spec());

    let started = std::time::Instant::now();
    let first = ws.run("pipeline.yaml");
    assert_eq!(
        first.code,
        0,
        "{}\n{}",
        first.stderr,
        api.requests().join("\n")
    );
    assert_eq!(
        metric(&first.report(), "bronze.orders", "rows_written"),
        1_050
    );
    assert_eq!(api_rows(&ws), (1_050, 1_050));
    let requests = api.requests();
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("429 ")).count(),
        1,
        "{requests:#?}"
    );
    assert_eq!(requests.iter().filter(|r| r.starts_with("500 ")).count(), 1);
    // 11 pages of records and an empty one, pages 2 and 3 asked twice.
    assert_eq!(
        requests.iter().filter(|r| r.starts_with("200 ")).count(),
        12
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After: 1 was not waited for"
    );
    assert!(!first.stderr.contains(API_TOKEN), "the token was printed");
    let last = "2024-01-01T00:17:30Z";
    assert_eq!(
        source_positions(&ws.path().join("lake/bronze/orders")),
        [serde_json::json!({"since": last})]
    );

    api.add(1051..1171, 0);
    api.add(1..31, 100_000);
    std::fs::write(&api.log, "").unwrap();
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(
        metric(&second.report(), "bronze.orders", "rows_written"),
        150
    );
    assert!(
        api.requests()
            .iter()
            .all(|r| r.contains(&format!("updated_since={}", last.replace(':', "%3A")))),
        "{:#?}",
        api.requests()
    );
    assert_eq!(api_rows(&ws), (1_200, 1_200));

    let third = ws.run("pipeline.yaml");
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(metric(&third.report(), "bronze.orders", "rows_written"), 0);
    assert_eq!(api_rows(&ws), (1_200, 1_200));
}

/// Runs SIGKILLed while they page through the API (a tenth of a second a page), before and
/// after a first commit: every record lands once.
#[test]
fn a_killed_api_read_replays_without_duplicates_or_gaps() {
    let ws = api_workspace();
    let api = Api::start(&ws, 100);
    api.add(1..3001, 0);
    ws.write("pipeline.yaml", &api.spec());
    let run = ["run", "pipeline.yaml"];
    assert!(
        ws.killed_when(&run, || api.requests().len() >= 12),
        "not killed while paging"
    );
    assert!(
        !ws.has_table("lake/bronze/orders"),
        "a killed run committed"
    );
    let done = ws.run("pipeline.yaml");
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(api_rows(&ws), (3_000, 3_000));

    api.add(3001..3501, 0);
    std::fs::write(&api.log, "").unwrap();
    assert!(
        ws.killed_when(&run, || api.requests().len() >= 3),
        "not killed while paging"
    );
    let done = ws.run("pipeline.yaml");
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(metric(&done.report(), "bronze.orders", "rows_written"), 500);
    assert_eq!(api_rows(&ws), (3_500, 3_500));
}
