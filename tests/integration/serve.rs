//! Issue 19: serving the lake - `medallion sql` with time travel and consistent snapshots.

use std::time::{Duration, Instant};

use medallion_tests::{Workspace, python_json};
use serde_json::Value;

use crate::fixture::{ORDERS_3, SPEC, shop};
use crate::security::token;

/// Orders per customer and their value in cents, as both engines can give them exactly.
const PER_CUSTOMER: &str = "SELECT customer_id, total_orders, \
     CAST(lifetime_value * 100 AS BIGINT) AS cents FROM {t} ORDER BY customer_id";

/// `medallion sql <spec> <query> --output json`, parsed.
fn ours(ws: &Workspace, query: &str, extra: &[&str]) -> Value {
    let mut args = vec!["sql", "pipeline.yaml", query, "--output", "json"];
    args.extend_from_slice(extra);
    let out = ws.medallion(&args);
    assert_eq!(out.code, 0, "{query}: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// DuckDB's Delta reader's answer over one table (`{t}` in the query), at `version`.
fn duckdb(ws: &Workspace, table: &str, query: &str, version: u64) -> Value {
    let dir = ws.path().join("lake").join(table.replace('.', "/"));
    let version = version.to_string();
    python_json(&[
        "sql",
        dir.to_str().unwrap(),
        &query.replace("{t}", "t"),
        &version,
    ])
}

fn version(ws: &Workspace, table: &str) -> u64 {
    ws.read_table(&format!("lake/{}", table.replace('.', "/")))["version"]
        .as_u64()
        .unwrap()
}

/// Tables by name at their latest version, at `VERSION AS OF`, at `TIMESTAMP AS OF`, and all
/// at one run's snapshot, each equal to DuckDB's Delta reader at the same version; CSV and
/// Parquet output; what is not a query, an unknown table and an unknown run exit 2.
#[test]
fn sql_reads_tables_by_name_at_a_version_a_time_or_a_runs_snapshot() {
    let ws = shop();
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_run = first.report()["run_id"].as_str().unwrap().to_string();
    let v1 = version(&ws, "gold.customer_360");
    let between = chrono::Utc::now().to_rfc3339();
    std::thread::sleep(Duration::from_millis(50));
    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let v2 = version(&ws, "gold.customer_360");
    assert!(v2 > v1);

    let query = PER_CUSTOMER.replace("{t}", "gold.customer_360");
    let latest = ours(&ws, &query, &[]);
    assert_eq!(latest, duckdb(&ws, "gold.customer_360", PER_CUSTOMER, v2));
    let at_v1 = ours(
        &ws,
        &PER_CUSTOMER.replace("{t}", &format!("gold.customer_360 VERSION AS OF {v1}")),
        &[],
    );
    assert_eq!(at_v1, duckdb(&ws, "gold.customer_360", PER_CUSTOMER, v1));
    assert_ne!(at_v1, latest);
    let at_time = ours(
        &ws,
        &PER_CUSTOMER.replace(
            "{t}",
            &format!("gold.customer_360 TIMESTAMP AS OF '{between}'"),
        ),
        &[],
    );
    assert_eq!(at_time, at_v1);

    // The first run's snapshot: every table as that run left it.
    let snapshot = ["--snapshot", first_run.as_str()];
    assert_eq!(ours(&ws, &query, &snapshot), at_v1);
    let products = "SELECT product_id, units_sold FROM {t} ORDER BY product_id";
    let p1 = ws.read_table("lake/gold/product_performance")["history"]
        .as_array()
        .unwrap()
        .len() as u64
        - 2;
    assert_eq!(
        ours(
            &ws,
            &products.replace("{t}", "gold.product_performance"),
            &snapshot
        ),
        duckdb(&ws, "gold.product_performance", products, p1)
    );

    // CSV, and Parquet read back by pyarrow.
    let csv = ws.medallion(&["sql", "pipeline.yaml", &query, "--output", "csv"]);
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    let lines: Vec<&str> = csv.stdout.lines().collect();
    assert_eq!(lines[0], "customer_id,total_orders,cents");
    assert_eq!(lines.len() - 1, latest.as_array().unwrap().len());
    let parquet = ws.path().join("out.parquet");
    let status = std::process::Command::new(medallion_tests::medallion_bin())
        .args(["sql", "pipeline.yaml", &query, "--output", "parquet"])
        .current_dir(ws.path())
        .stdout(std::fs::File::create(&parquet).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let read = medallion_tests::run_python(
        "import sys, json, pyarrow.parquet as pq; print(json.dumps(pq.read_table(sys.argv[1]).to_pylist()))",
        &[&parquet],
    );
    assert_eq!(serde_json::from_str::<Value>(&read).unwrap(), latest);

    for (args, expected) in [
        (
            vec!["sql", "pipeline.yaml", "DELETE FROM gold.customer_360"],
            "read-only",
        ),
        (
            vec!["sql", "pipeline.yaml", "SELECT * FROM gold.nope"],
            "gold.nope",
        ),
        (
            vec![
                "sql",
                "pipeline.yaml",
                "SELECT 1",
                "--snapshot",
                "shop-nope",
            ],
            "shop-nope",
        ),
        (
            vec![
                "sql",
                "pipeline.yaml",
                "SELECT * FROM gold.customer_360 TIMESTAMP AS OF '2001-01-01'",
            ],
            "did not exist yet",
        ),
    ] {
        let out = ws.medallion(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
}

/// Snapshot isolation: while a run is rewriting gold (its `slow` table, which reads
/// `customer_360`, still computing after `customer_360` committed), a reader of the previous
/// run's snapshot sees the previous version of every gold table; a reader of the latest
/// versions sees the mix the snapshot avoids. Afterwards the new run's snapshot has both new
/// versions.
#[test]
fn a_snapshot_reader_never_sees_a_run_half_done() {
    let ws = shop();
    let spec = format!(
        "{SPEC}  - name: slow\n    sql: SELECT count(*) AS n FROM (SELECT unnest(range(2000000)) \
         AS v FROM silver.orders CROSS JOIN (SELECT count(*) AS c FROM gold.customer_360) g) x\n"
    );
    ws.write("pipeline.yaml", &spec);
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_run = first.report()["run_id"].as_str().unwrap().to_string();
    let both = "SELECT (SELECT sum(total_orders) FROM gold.customer_360) AS orders, \
                (SELECT n FROM gold.slow) AS slow";
    let before = ours(&ws, both, &[]);
    let v1 = version(&ws, "gold.customer_360");

    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let mut run = std::process::Command::new(medallion_tests::medallion_bin())
        .args([
            "run",
            "pipeline.yaml",
            "--output",
            "json",
            "--executors",
            "2",
        ])
        .current_dir(ws.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for customer_360's new version while `slow` is still computing.
    let log = ws.path().join("lake/gold/customer_360/_delta_log");
    let next = log.join(format!("{:020}.json", v1 + 1));
    let start = Instant::now();
    while !next.exists() {
        assert!(run.try_wait().unwrap().is_none(), "the run ended first");
        assert!(start.elapsed() < Duration::from_secs(120), "no new version");
        std::thread::sleep(Duration::from_millis(20));
    }
    let snapshot = ours(&ws, both, &["--snapshot", &first_run]);
    let mixed = ours(&ws, both, &[]);
    let still_running = run.try_wait().unwrap().is_none();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        still_running,
        "the run ended while the readers read: make `slow` slower"
    );
    assert_eq!(
        snapshot, before,
        "the snapshot reader saw the run half done"
    );
    assert_eq!(mixed[0]["slow"], before[0]["slow"], "{mixed}");
    assert_ne!(mixed[0]["orders"], before[0]["orders"], "{mixed}");

    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let second_run = report["run_id"].as_str().unwrap();
    let after = ours(&ws, both, &["--snapshot", second_run]);
    assert_ne!(after[0]["orders"], before[0]["orders"]);
    assert_ne!(after[0]["slow"], before[0]["slow"]);
    assert_eq!(after, ours(&ws, both, &[]));
}

/// The Flight SQL endpoint, queried by a client nobody here wrote: the ADBC Flight SQL driver
/// from PyPI reads into pyarrow a result of a million rows, a table at an earlier version and
/// every table at a run's snapshot (a call header), each equal to DuckDB's Delta reader on the
/// same versions; a statement that is not a query is refused; its table browser lists the
/// pipeline as a catalog with its layers, tables and columns, and a pipeline-qualified name
/// queries the same table. The client API's tokens guard it:
/// a viewer's token reads, a call without one is refused. `medallion plan --cluster` asks the
/// leader what a run would do.
#[test]
fn flight_sql_serves_the_lake_to_the_adbc_driver() {
    let ws = shop();
    let (viewer, viewer_entry) = token(&ws, "dashboards", "viewer");
    let (admin, admin_entry) = token(&ws, "ops", "admin");
    let tokens = ws.write("tokens.yaml", &format!("{viewer_entry}\n{admin_entry}\n"));
    ws.set_env("MEDALLION_TOKEN", &admin);
    let cluster = medallion_tests::cluster::Cluster::start_with(
        &ws,
        1,
        1,
        &["--tokens", tokens.to_str().unwrap()],
    );
    let deploy = cluster.client(&ws, &["deploy", "pipeline.yaml"]);
    assert_eq!(deploy.code, 0, "{}\n{}", deploy.stderr, cluster.logs());
    let submit = |ws: &Workspace| {
        let out = cluster.client(
            ws,
            &["submit", "pipeline.yaml", "--wait", "--output", "json"],
        );
        assert_eq!(out.code, 0, "{}\n{}", out.stderr, cluster.logs());
        let status: Value = serde_json::from_str(&out.stdout).unwrap();
        status["report"]["run_id"].as_str().unwrap().to_string()
    };
    let first_run = submit(&ws);
    let v1 = version(&ws, "gold.customer_360");
    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    submit(&ws);
    let v2 = version(&ws, "gold.customer_360");
    assert!(v2 > v1);

    // `medallion plan --cluster`: the leader's plan, as the coordinators see the lake.
    let plan = ["plan", "pipeline.yaml", "--cluster", "--detailed-exitcode"];
    let nothing = cluster.client(&ws, &plan);
    assert_eq!(nothing.code, 0, "{}{}", nothing.stdout, nothing.stderr);
    ws.write(
        "data/orders/orders_4.jsonl",
        &ORDERS_3.replace("\"order_id\": 6", "\"order_id\": 7"),
    );
    let something = cluster.client(&ws, &plan);
    assert_eq!(
        something.code, 2,
        "{}{}",
        something.stdout, something.stderr
    );
    let ingest = something
        .stdout
        .lines()
        .find(|l| l.starts_with("bronze.orders"));
    assert!(
        ingest.is_some_and(|l| l.contains("ingest") && l.contains("1 new files")),
        "{}",
        something.stdout
    );
    std::fs::remove_file(ws.path().join("data/orders/orders_4.jsonl")).unwrap();

    let uri = cluster.coordinators[0].url().replace("http://", "grpc://");
    let table = ws.path().join("lake/gold/customer_360");
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[4])
import adbc_driver_flightsql.dbapi as flightsql
import delta_check

uri, table, first_run = sys.argv[1], sys.argv[2], sys.argv[3]
v1, v2, token = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
duck = delta_check.duckdb_connection()

def ours(query, token=token, **headers):
    kwargs = {f"adbc.flight.sql.rpc.call_header.{k}": v for k, v in headers.items()}
    if token:
        kwargs["adbc.flight.sql.authorization_header"] = f"Bearer {token}"
    with flightsql.connect(uri, db_kwargs=kwargs) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetch_arrow_table()

def duckdb(query, version):
    return duck.execute(query.replace("{t}", f"delta_scan('{table}', version := {version})")).to_arrow_table()

def same(a, b, keys):
    a, b = a.sort_by([(k, "ascending") for k in keys]), b.sort_by([(k, "ascending") for k in keys])
    return a.column_names == b.column_names and a.to_pydict() == b.to_pydict()

big = "SELECT c.customer_id, c.total_orders, r.v FROM {t} c CROSS JOIN (SELECT unnest(range(500000)) AS v) r"
per_customer = "SELECT customer_id, total_orders, CAST(lifetime_value * 100 AS BIGINT) AS cents FROM {t}"
large = ours(big.replace("{t}", "gold.customer_360"))
at_v1 = ours(per_customer.replace("{t}", f"gold.customer_360 VERSION AS OF {v1}"))
snapshot = ours(per_customer.replace("{t}", "gold.customer_360"), **{"x-medallion-snapshot": first_run})
latest = ours(per_customer.replace("{t}", "gold.customer_360"))
def error_of(query, **kwargs):
    try:
        ours(query, **kwargs)
        return ""
    except Exception as e:
        return str(e)
with flightsql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"}) as conn:
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
listed = {
    (c["catalog_name"], s["db_schema_name"], t["table_name"]): [col["column_name"] for col in t["table_columns"] or []]
    for c in objects for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []
}
qualified = ours("SELECT count(*) AS n FROM shop.gold.customer_360").to_pylist()[0]["n"]
refused = error_of("DROP TABLE gold.customer_360")
anonymous = error_of("SELECT 1", token="")
print(json.dumps({
    "large_rows": large.num_rows,
    "large_equal": same(large, duckdb(big, v2), ["customer_id", "v"]),
    "at_v1_equal": same(at_v1, duckdb(per_customer, v1), ["customer_id"]),
    "snapshot_equal": same(snapshot, duckdb(per_customer, v1), ["customer_id"]),
    "latest_equal": same(latest, duckdb(per_customer, v2), ["customer_id"]),
    "latest_differs": not same(latest, at_v1, ["customer_id"]),
    "refused": refused,
    "tables": sorted(".".join(k) for k in listed),
    "customer_360_columns": listed.get(("shop", "gold", "customer_360")),
    "qualified_rows": qualified,
    "latest_rows": latest.num_rows,
    "anonymous": anonymous,
}))
"#;
    let py = medallion_tests::py_dir();
    let out = medallion_tests::run_python(
        script,
        &[
            &uri,
            &table,
            &first_run,
            &py,
            &v1.to_string(),
            &v2.to_string(),
            &viewer,
        ],
    );
    let got: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(got["large_rows"], 1_000_000, "{got}");
    for check in [
        "large_equal",
        "at_v1_equal",
        "snapshot_equal",
        "latest_equal",
        "latest_differs",
    ] {
        assert_eq!(got[check], true, "{check}: {got}");
    }
    assert!(
        got["refused"].as_str().unwrap().contains("read-only"),
        "{got}"
    );
    // A tool browsing the endpoint: the pipeline as a catalog, its layers, tables and columns.
    let listed: Vec<&str> = got["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for table in [
        "shop.bronze.orders",
        "shop.silver.customers",
        "shop.gold.customer_360",
        "shop.gold.product_performance",
    ] {
        assert!(listed.contains(&table), "{table}: {listed:?}");
    }
    let columns = &got["customer_360_columns"];
    assert!(
        columns
            .as_array()
            .is_some_and(|c| c.contains(&"lifetime_value".into())),
        "{got}"
    );
    assert_eq!(got["qualified_rows"], got["latest_rows"], "{got}");
    assert!(
        got["anonymous"]
            .as_str()
            .unwrap()
            .contains("requires a token"),
        "{got}"
    );
}
