//! Nothing lost, nothing doubled: runs at the same time, a lake moved with its data,
//! symbolic links and globs, quarantine commits, and raw values kept exactly.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};

use medallion_tests::{Workspace, medallion_bin, metric, table};
use serde_json::Value;

use crate::fixture::{ORDERS_1, ORDERS_2, ORDERS_3, shop};

fn rows(t: &Value) -> &Vec<Value> {
    t["rows"].as_array().expect("rows")
}

/// Rows per `_source_file`.
fn rows_per_file(t: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in rows(t) {
        *counts
            .entry(r["_source_file"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

fn spawn(ws: &Workspace, args: &[&str]) -> Child {
    Command::new(medallion_bin())
        .args(args)
        .current_dir(ws.path())
        .env("MEDALLION_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start medallion")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("wait for medallion");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A bronze-only pipeline (quick to run) over orders files.
const INGEST: &str = r#"
pipeline: NAME
lake: lake
sources:
  - { name: api, format: json, path: data/orders/*.jsonl }
  - { name: crm, format: csv, path: data/customers.csv }
bronze:
  - { name: orders, source: api, files_per_task: 1 }
  - { name: customers, source: crm }
"#;

/// Item 1: two runs at once doubled bronze. Each round adds a file and starts three runs at
/// the same moment: the pipeline twice (each waiting its turn for the lease) and a second
/// pipeline on the same lake and tables, which no lease keeps apart: bronze's commit check
/// must. Then the lease itself: a run finding it held is refused, or waits with `--wait`.
#[test]
fn runs_at_the_same_time_never_double_rows() {
    let ws = Workspace::new();
    ws.write("p.yaml", &INGEST.replace("NAME", "ingest"));
    ws.write("q.yaml", &INGEST.replace("NAME", "ingest_other"));
    ws.write("data/customers.csv", crate::fixture::CUSTOMERS);
    let batches = [ORDERS_1, ORDERS_2, ORDERS_3];
    let mut expected = BTreeMap::new();
    for round in 0..12 {
        let batch = batches[round % batches.len()];
        let name = format!("orders_{round:02}.jsonl");
        ws.write(&format!("data/orders/{name}"), batch);
        expected.insert(name, batch.lines().count());
        let runs = [
            spawn(&ws, &["run", "p.yaml", "--wait"]),
            spawn(&ws, &["run", "p.yaml", "--wait"]),
            spawn(&ws, &["run", "q.yaml"]),
        ];
        for (i, (code, stderr)) in runs.into_iter().map(finish).enumerate() {
            assert!(!stderr.contains("panicked"), "round {round}: {stderr}");
            assert_eq!(code, 0, "round {round}, run {i}:\n{stderr}");
        }
        let orders = ws.read_table("lake/bronze/orders");
        assert_eq!(orders["readers_agree"], true);
        assert_eq!(rows_per_file(&orders), expected, "round {round}");
        let customers = ws.read_table("lake/bronze/customers");
        assert_eq!(customers["num_rows"], 2, "round {round}");
    }

    // Held by someone else (here, this test): refused with code 3, or waited for.
    let lease = std::fs::File::options()
        .read(true)
        .write(true)
        .open(ws.path().join("lake/_medallion/leases/ingest.lock"))
        .unwrap();
    lease.lock().unwrap();
    let refused = ws.medallion(&["run", "p.yaml"]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("pipeline 'ingest' is already running on lake"),
        "{}",
        refused.stderr
    );
    let mut waiting = spawn(&ws, &["run", "p.yaml", "--wait"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(waiting.try_wait().unwrap().is_none(), "it did not wait");
    lease.unlock().unwrap();
    let (code, stderr) = finish(waiting);
    assert_eq!(code, 0, "{stderr}");
}

/// Item 2: a lake copied together with its data (another directory, another mount point)
/// ingested every file again.
#[test]
fn a_lake_moved_with_its_data_ingests_nothing_again() {
    let ws = shop();
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let moved = Workspace::new();
    // `-a` keeps modification times, which tell a local file changed in place.
    let copy = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", ws.path().display()))
        .arg(moved.path())
        .status()
        .unwrap();
    assert!(copy.success());
    let again = moved.run("pipeline.yaml");
    assert_eq!(again.code, 0, "{}", again.stderr);
    let report = again.report();
    for t in ["bronze.orders", "bronze.customers", "bronze.products"] {
        assert_eq!(table(&report, t)["status"], "up_to_date", "{t}");
        assert!(table(&report, t).get("files_changed").is_none(), "{t}");
    }
    assert_eq!(moved.read_table("lake/bronze/orders")["num_rows"], 8);
    // A new file in the new place is ingested, and only it.
    moved.write("data/orders/orders_3.jsonl", ORDERS_3);
    let third = moved.run("pipeline.yaml").report();
    assert_eq!(metric(&third, "bronze.orders", "files_read"), 1);
    assert_eq!(moved.read_table("lake/bronze/orders")["num_rows"], 10);
}

/// Item 3: a symbolic link loop repeated one file 41 times, and a glob covering the lake
/// ingested the lake's own data files.
#[test]
fn links_and_globs_list_each_real_file_once_and_never_the_lake() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        r#"
pipeline: links
lake: lake
sources:
  - { name: api, format: json, path: "data/**/*.jsonl" }
  - { name: everything, format: parquet, path: "**/*.parquet" }
bronze:
  - { name: orders, source: api }
  - { name: products, source: everything }
"#,
    );
    ws.write("data/orders/a.jsonl", ORDERS_2);
    ws.write("data/orders/deeper/b.jsonl", ORDERS_3);
    std::os::unix::fs::symlink(".", ws.path().join("data/orders/loop")).unwrap();
    std::os::unix::fs::symlink("deeper", ws.path().join("data/orders/again")).unwrap();
    let generated = ws.medallion(&["generate", "gen", "--orders", "10", "--files", "1"]);
    assert_eq!(generated.code, 0, "{}", generated.stderr);
    for round in 0..2 {
        let out = ws.run("pipeline.yaml");
        assert_eq!(out.code, 0, "round {round}: {}", out.stderr);
        let orders = ws.read_table("lake/bronze/orders");
        assert_eq!(
            rows_per_file(&orders),
            BTreeMap::from([
                ("orders/a.jsonl".to_string(), 2),
                ("orders/deeper/b.jsonl".to_string(), 2),
            ]),
            "round {round}"
        );
        let products = ws.read_table("lake/bronze/products");
        let files = rows_per_file(&products);
        assert_eq!(files.len(), 1, "only the generated file: {files:?}");
        assert_eq!(products["num_rows"], 10, "round {round}");
    }
}

/// Item 4: a failed quarantine commit was followed by "up to date", and a change of the
/// table's column types made every later quarantine commit fail.
#[test]
fn quarantined_rows_land_with_their_table_or_the_table_is_computed_again() {
    let ws = shop();
    let spec = |amount_type: &str| {
        crate::fixture::SPEC.replace(
            "      GROUP BY p.product_id, p.product_name, p.category\n",
            &format!(
                "      GROUP BY p.product_id, p.product_name, p.category\n    checks:\n      - {{ name: big_sellers, check: expression, expr: \"units_sold < 4\", severity: warning, action: quarantine }}\n  - name: amounts\n    sql: SELECT order_id, CAST(amount AS {amount_type}) AS amount FROM silver.orders\n    checks:\n      - {{ name: small, check: expression, expr: \"amount < 25\", severity: warning, action: quarantine }}\n"
            ),
        )
    };
    ws.write("pipeline.yaml", &spec("DOUBLE"));
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let q = ws.read_table("lake/gold/amounts__quarantine");
    assert_eq!(q["num_rows"], 1, "order 4 (30.00) is quarantined: {q:#}");

    // The column's type changes: the quarantine table follows.
    ws.write("pipeline.yaml", &spec("DECIMAL(20,2)"));
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let q = ws.read_table("lake/gold/amounts__quarantine");
    assert_eq!(q["num_rows"], 1, "{q:#}");
    assert_eq!(rows(&q)[0]["amount"], 30.0);

    // A quarantine table that cannot be written: the table commits, the run fails, and the
    // next run computes the table again instead of calling it up to date.
    let quarantine = ws.path().join("lake/gold/product_performance__quarantine");
    std::fs::remove_dir_all(&quarantine).unwrap();
    let log = quarantine.join("_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    std::fs::write(
        log.join("00000000000000000000.json"),
        concat!(
            r#"{"protocol":{"minReaderVersion":1,"minWriterVersion":7,"writerFeatures":["madeUpFeature"]}}"#,
            "\n",
            r#"{"metaData":{"id":"x","format":{"provider":"parquet","options":{}},"schemaString":"{\"type\":\"struct\",\"fields\":[{\"name\":\"a\",\"type\":\"long\",\"nullable\":true,\"metadata\":{}}]}","partitionColumns":[],"configuration":{},"createdTime":0}}"#,
            "\n"
        ),
    )
    .unwrap();
    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let third = ws.run("pipeline.yaml");
    assert_eq!(third.code, 1, "{}", third.stdout);
    let perf = table(&third.report(), "gold.product_performance").clone();
    assert!(
        perf["error"]
            .as_str()
            .unwrap_or_default()
            .contains("quarantined rows are not"),
        "{perf:#}"
    );
    std::fs::remove_dir_all(&quarantine).unwrap();
    let fourth = ws.run("pipeline.yaml");
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert_eq!(
        table(&fourth.report(), "gold.product_performance")["status"],
        "committed"
    );
    let q = ws.read_table("lake/gold/product_performance__quarantine");
    assert_eq!(
        q["num_rows"], 1,
        "product 100 (5 units) is quarantined: {q:#}"
    );
}

/// Items 5, 6 and 7 end to end: what the readers keep reaches the table, read back by both
/// independent readers.
#[test]
fn raw_values_reach_bronze_exactly_and_bad_encodings_never_define_columns() {
    let ws = Workspace::new();
    ws.write(
        "pipeline.yaml",
        r#"
pipeline: raw
lake: lake
sources:
  - { name: api, format: json, path: data/orders }
  - { name: crm, format: csv, path: data/crm }
bronze:
  - { name: orders, source: api }
  - { name: crm, source: crm }
silver:
  - name: orders
    from: bronze.orders
    columns:
      - { name: id, type: bigint }
      - { name: amount, type: "decimal(22,2)" }
"#,
    );
    ws.write(
        "data/orders/a.jsonl",
        "{\"id\": 1, \"amount\": 12345678901234567.89, \"extra\": 99999999999999999999}\n",
    );
    // UTF-16 without a byte order mark: refused, naming the file, before it names columns.
    let utf16: Vec<u8> = "id,v\n1,x\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::create_dir_all(ws.path().join("data/crm")).unwrap();
    std::fs::write(ws.path().join("data/crm/a.csv"), &utf16).unwrap();
    let out = ws.run("pipeline.yaml");
    assert_eq!(out.code, 1);
    let crm = table(&out.report(), "bronze.crm").clone();
    let error = crm["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("data/crm/a.csv") && error.contains("save it as UTF-8"),
        "{crm:#}"
    );
    assert!(!ws.has_table("lake/bronze/crm"), "nothing committed");

    // With a byte order mark it is converted; repeated header names and a quote left open
    // are rescued, not lost.
    let mut with_bom = vec![0xFF, 0xFE];
    with_bom.extend(
        "id,v,v\n1,a,b\n2,\"open\n3,swallowed\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes),
    );
    std::fs::write(ws.path().join("data/crm/a.csv"), &with_bom).unwrap();
    let out = ws.run("pipeline.yaml");
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(metric(&out.report(), "bronze.crm", "rows_rescued"), 2);
    let crm = ws.read_table("lake/bronze/crm");
    assert_eq!(crm["readers_agree"], true);
    let columns: Vec<&str> = crm["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|c| !c.starts_with('_'))
        .collect();
    assert_eq!(columns, ["id", "v"]);
    let rescued: Vec<String> = rows(&crm)
        .iter()
        .map(|r| r["_rescued_data"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        rescued.iter().any(|r| r.contains(r#""_c2":"b""#)),
        "{rescued:?}"
    );
    assert!(
        rescued.iter().any(|r| r.contains("swallowed")),
        "{rescued:?}"
    );

    let orders = ws.read_table("lake/bronze/orders");
    let row = &rows(&orders)[0];
    assert_eq!(row["amount"], "12345678901234567.89");
    assert_eq!(row["extra"], "99999999999999999999");
    let silver = ws.read_table("lake/silver/orders");
    assert_eq!(rows(&silver)[0]["amount"], 12345678901234567.89);
    let silver_path = ws.path().join("lake/silver/orders");
    let exact = medallion_tests::python_json(&[
        "sql",
        silver_path.to_str().unwrap(),
        "SELECT CAST(amount AS VARCHAR) AS a FROM t",
    ]);
    assert_eq!(exact[0]["a"], "12345678901234567.89");
}

/// A pipeline whose gold query never ends in practice (2 x 10^10 rows of a cross join).
fn runaway(timeouts: &str) -> String {
    format!(
        r#"
pipeline: runaway
lake: lake
timeouts: {timeouts}
sources:
  - {{ name: api, format: json, path: data }}
bronze:
  - {{ name: orders, source: api }}
gold:
  - name: endless
    sql: |
      SELECT count(*) AS n FROM bronze.orders,
        (SELECT unnest(range(1, 100000)) AS a) x, (SELECT unnest(range(1, 100000)) AS b) y
"#
    )
}

/// Item 9: a runaway query held the run for ever. A task that runs out of `timeouts.task`
/// fails its table; tables still running when `timeouts.run` is up fail too.
#[test]
fn timeouts_stop_runaway_queries() {
    let ws = Workspace::new();
    ws.write("data/a.jsonl", ORDERS_3);
    for (timeouts, says) in [
        ("{ task: 3s }", "timed out after 3s (timeouts.task)"),
        (
            "{ run: 5s }",
            "the run's time ran out after 5s (timeouts.run)",
        ),
    ] {
        ws.write("pipeline.yaml", &runaway(timeouts));
        let started = std::time::Instant::now();
        let out = ws.run("pipeline.yaml");
        assert_eq!(out.code, 1, "{}", out.stderr);
        // The query would run for hours; a loaded machine may still take a while to start
        // the run and to stop it.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "took {:?}",
            started.elapsed()
        );
        let gold = table(&out.report(), "gold.endless").clone();
        assert!(
            gold["error"].as_str().unwrap_or_default().contains(says),
            "{gold:#}"
        );
        assert!(!ws.has_table("lake/gold/endless"));
    }
}

/// Item 9: Ctrl-C during a spilling query left its spill files in the temp directory.
#[test]
fn an_interrupted_run_removes_its_spill_files() {
    let ws = Workspace::new();
    ws.write("data/a.jsonl", ORDERS_3);
    ws.write(
        "pipeline.yaml",
        r#"
pipeline: spills
lake: lake
sources:
  - { name: api, format: json, path: data }
bronze:
  - { name: orders, source: api }
gold:
  - name: ranked
    sql: |
      SELECT max(r) AS n FROM (
        SELECT row_number() OVER (ORDER BY a * b DESC) AS r
        FROM (SELECT unnest(range(1, 10000)) AS a) x, (SELECT unnest(range(1, 10000)) AS b) y)
"#,
    );
    let tmp = ws.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let child = Command::new(medallion_bin())
        .args(["run", "pipeline.yaml", "--memory-limit", "64MiB"])
        .current_dir(ws.path())
        .env("TMPDIR", &tmp)
        .env("MEDALLION_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    let spill = tmp.join(format!("medallion-spill-{}", child.id()));
    let has_files = |dir: &std::path::Path| walk(dir).into_iter().any(|p| p.is_file());
    let mut ended = None;
    medallion_tests::cluster::wait_for("spill files", std::time::Duration::from_secs(300), || {
        ended = child.try_wait().unwrap();
        has_files(&spill) || ended.is_some()
    });
    if ended.is_some() {
        let (code, stderr) = finish(child);
        panic!("the run ended (exit {code}) before it spilled:\n{stderr}");
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let (code, stderr) = finish(child);
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!spill.exists(), "spill files left: {:?}", walk(&spill));
    assert!(!ws.has_table("lake/gold/ranked"));
}

/// Every path under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// A feed whose source files may be written again after they were ingested.
fn rewritten_feed(on_change: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &format!(
            "pipeline: feed\nlake: lake\nsources:\n\
             \x20 - {{ name: api, format: json, path: data/*.jsonl{on_change} }}\n\
             bronze:\n  - {{ name: events, source: api }}\n\
             silver:\n  - {{ name: events, from: bronze.events, keys: [id], \
             columns: [{{ name: id }}, {{ name: v }}] }}\n"
        ),
    );
    ws.write(
        "data/a.jsonl",
        "{\"id\": 1, \"v\": \"a1\"}\n{\"id\": 2, \"v\": \"a2\"}\n",
    );
    ws.write("data/b.jsonl", "{\"id\": 3, \"v\": \"b3\"}\n");
    let first = ws.run("p.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    // Written again in place: other records, another size.
    ws.write(
        "data/a.jsonl",
        "{\"id\": 1, \"v\": \"A1\"}\n{\"id\": 4, \"v\": \"A4\"}\n{\"id\": 5, \"v\": \"A5\"}\n",
    );
    ws
}

/// `(id, v)` of a table's rows, sorted.
fn values(t: &Value) -> Vec<(String, String)> {
    assert_eq!(t["readers_agree"], true, "{t:#}");
    let mut rows: Vec<_> = rows(t)
        .iter()
        .map(|r| (text(&r["id"]), text(&r["v"])))
        .collect();
    rows.sort();
    rows
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn pairs(expected: &[(i64, &str)]) -> Vec<(String, String)> {
    let mut rows: Vec<_> = expected
        .iter()
        .map(|(id, v)| (id.to_string(), v.to_string()))
        .collect();
    rows.sort();
    rows
}

/// Issue 17: a source file changed in place after it was ingested was skipped silently.
/// By default (`on_change: skip`) the change is reported and the rows stay; `reingest`
/// replaces exactly that file's rows in one bronze commit (silver follows); `fail` fails the
/// table naming the file, and nothing is written.
#[test]
fn a_file_changed_in_place_is_reported_reingested_or_refused() {
    let before = pairs(&[(1, "a1"), (2, "a2"), (3, "b3")]);

    let ws = rewritten_feed("");
    let skipped = ws.medallion(&["run", "p.yaml"]);
    assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    let text = format!("{}{}", skipped.stdout, skipped.stderr);
    assert!(
        text.contains("warning: bronze.events: 1 source file(s) changed since they were ingested and were not ingested again (on_change: skip): a.jsonl"),
        "{text}"
    );
    let bronze = ws.read_table("lake/bronze/events");
    assert_eq!(
        (values(&bronze), bronze["version"].as_u64()),
        (before.clone(), Some(0))
    );
    let report = ws.run("p.yaml").report();
    let events = table(&report, "bronze.events");
    assert_eq!(events["status"], "up_to_date");
    assert_eq!(
        events["files_changed"]["files"],
        serde_json::json!(["a.jsonl"])
    );
    assert_eq!(events["files_changed"]["action"], "skip");

    let ws = rewritten_feed(", on_change: reingest");
    let report = ws.run("p.yaml").report();
    let events = table(&report, "bronze.events");
    assert_eq!(events["status"], "committed", "{report:#}");
    assert_eq!(events["files_changed"]["action"], "reingest");
    assert_eq!(metric(&report, "bronze.events", "files_read"), 1);
    let after = pairs(&[(1, "A1"), (3, "b3"), (4, "A4"), (5, "A5")]);
    let bronze = ws.read_table("lake/bronze/events");
    assert_eq!(
        (values(&bronze), bronze["version"].as_u64()),
        (after.clone(), Some(1))
    );
    assert_eq!(rows_per_file(&bronze)["a.jsonl"], 3);
    let silver = ws.read_table("lake/silver/events");
    assert_eq!(values(&silver), after);
    // The new contents are now what bronze holds: nothing more to do.
    let again = ws.run("p.yaml").report();
    let events = table(&again, "bronze.events");
    assert_eq!(events["status"], "up_to_date");
    assert!(events.get("files_changed").is_none(), "{again:#}");

    let ws = rewritten_feed(", on_change: fail");
    let lake = ws.lake_files("lake");
    let failed = ws.run("p.yaml");
    assert_ne!(failed.code, 0);
    assert!(
        failed.stdout.contains("source 'api': 1 file(s) changed since bronze.events ingested them: a.jsonl (on_change: fail"),
        "{}\n{}",
        failed.stdout,
        failed.stderr
    );
    assert_eq!(ws.lake_files("lake"), lake, "nothing written");
    assert_eq!(values(&ws.read_table("lake/bronze/events")), before);
}
