//! Sources and lakes on object storage (`s3://`), against S3 servers on loopback: s3s-fs, a
//! real server with authentication, and moto for a quick case. Tables are read back by both
//! independent readers over S3 and compared with runs on local disk.

use medallion_tests::azure::Azurite;
use medallion_tests::cluster::Cluster;
use medallion_tests::s3::S3Server;
use medallion_tests::{
    EXAMPLE_TABLES, Workspace, assert_same_example_table, metric, read_delta, table,
};
use serde_json::{Value, json};

use crate::fixture::{SPEC, shop};

#[test]
fn lake_on_s3_takes_storage_options() {
    let s3 = S3Server::moto();
    s3.create_bucket("lake");
    // Credentials in the spec's lake options: allowed for a lake (not for sources).
    let options = s3.reader_options();
    let ws = shop();
    let lake = format!("lake:\n  root: s3://lake/shop\n  storage_options: {options}\n");
    ws.write("pipeline.yaml", &SPEC.replace("lake: lake\n", &lake));

    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.report();
    assert_eq!(metric(&report, "silver.orders", "rows_written"), 3);
    assert!(
        !ws.path().join("lake").exists(),
        "nothing may be written locally"
    );

    // Second run: bronze finds its ingested files in the S3 table, silver merges there.
    ws.write("data/orders/orders_3.jsonl", crate::fixture::ORDERS_3);
    let again = ws.run("pipeline.yaml").report();
    assert_eq!(again["succeeded"], true, "{again:#}");
    assert_eq!(metric(&again, "bronze.orders", "files_read"), 1);
    assert_eq!(metric(&again, "silver.orders", "rows_inserted"), 1);

    let read = |table: &str| read_delta(&format!("s3://lake/shop/{table}"), Some(&options));
    let silver = read("silver/orders");
    assert_eq!(silver["readers_agree"], true, "{silver:#}");
    assert_eq!(silver["num_rows"], 4);
    let gold = read("gold/customer_360");
    assert_eq!(gold["readers_agree"], true);
    assert_eq!(gold["num_rows"], 2);
}

/// The example with its sources in the bucket `raw` and its lake in the bucket `lake` of an
/// s3s-fs server, the credentials only in the environment, and a local-disk copy
/// (`local.yaml`, lake `lake`) for reference. Returns the server and the workspace.
///
/// s3s-fs names a file after each key's base64 and so takes keys of up to ~160 characters
/// (S3 takes 1,024): hence a lake at a bucket's root and a pipeline named `shop`, which keep a
/// merge's staged files (`_medallion/staging/<run>/silver/orders/<dispatch>/part-...`) short
/// enough.
fn example_on_s3(orders: usize, files: usize) -> (S3Server, Workspace) {
    let (ws, _) = Workspace::example(orders, files);
    let s3 = S3Server::s3s_fs(&ws.path().join("s3"));
    s3.create_bucket("raw");
    s3.create_bucket("lake");
    s3.upload(&ws.path().join("data"), "raw", "shop");
    s3.credentials_into(&ws);
    let local = std::fs::read_to_string(ws.path().join("pipeline.yaml"))
        .unwrap()
        .replace("pipeline: ecommerce\n", "pipeline: shop\n");
    assert!(local.contains("lake: ./lake ") && local.contains("path: data/"));
    ws.write("local.yaml", &local);
    let lake = format!(
        "lake: {{ root: s3://lake, storage_options: {} }} ",
        s3.endpoint_options()
    );
    let on_s3 = local
        .replace("lake: ./lake ", &lake)
        .replace("path: data/", "path: s3://raw/shop/");
    ws.write("pipeline.yaml", &on_s3);
    (s3, ws)
}

/// Asserts every table of the example in the bucket equals the local run's.
fn assert_same_tables_as_local(s3: &S3Server, ws: &Workspace, logs: &str) {
    let local = ws.run("local.yaml");
    assert_eq!(local.code, 0, "{}", local.stderr);
    let options = s3.reader_options();
    for table in EXAMPLE_TABLES {
        let ours = read_delta(&format!("s3://lake/{table}"), Some(&options));
        let reference = ws.read_table(&format!("lake/{table}"));
        assert_same_example_table(table, &ours, &reference, logs);
    }
}

/// Files read by bronze tables in a run report.
fn files_read(report: &Value) -> Vec<u64> {
    ["bronze.orders", "bronze.customers", "bronze.products"]
        .iter()
        .map(|t| {
            table(report, t)["metrics"]["files_read"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect()
}

/// Sources and lake on S3 in embedded mode equal a local-disk run; a second run reads only the
/// object added since; without credentials the run fails naming the source, writing nothing.
#[test]
fn sources_and_lake_on_s3_equal_a_local_run() {
    let (s3, ws) = example_on_s3(5_000, 6);
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(files_read(&run.report()), [6, 1, 1]);
    assert!(
        !ws.path().join("lake").exists(),
        "nothing may be written locally"
    );

    // One more object: only it is read, and every table equals the local run's.
    let extra = ws.path().join("extra");
    let first = std::fs::read_dir(ws.path().join("data/orders"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .unwrap();
    let text = std::fs::read_to_string(&first).unwrap();
    let late: String = text.lines().take(50).map(|l| format!("{l}\n")).collect();
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("orders_late.jsonl"), &late).unwrap();
    std::fs::write(ws.path().join("data/orders/orders_late.jsonl"), &late).unwrap();
    s3.upload(&extra, "raw", "shop/orders");
    let again = ws.run("pipeline.yaml");
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(files_read(&again.report()), [1, 0, 0]);
    assert_same_tables_as_local(&s3, &ws, &again.stderr);

    // Sources and lake copied to other buckets: a run there reads no object, changes no table.
    for (from, to) in [("raw", "raw2"), ("lake", "lake2")] {
        s3.create_bucket(to);
        s3.copy_bucket(from, to);
    }
    let spec = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    let moved = spec
        .replace("path: s3://raw/", "path: s3://raw2/")
        .replace("root: s3://lake,", "root: s3://lake2,");
    assert_ne!(moved, spec);
    ws.write("moved.yaml", &moved);
    let options = s3.reader_options();
    let versions = || -> Vec<Value> {
        EXAMPLE_TABLES
            .iter()
            .map(|t| read_delta(&format!("s3://lake2/{t}"), Some(&options))["version"].clone())
            .collect()
    };
    let before = versions();
    let moved = ws.run("moved.yaml");
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    let report = moved.report();
    assert_eq!(files_read(&report), [0, 0, 0]);
    // Copies keep their ETags: no object counts as changed.
    assert!(
        table(&report, "bronze.orders")
            .get("files_changed")
            .is_none()
    );
    assert_eq!(versions(), before);

    // An object written again in place (another ETag and size) is reported, and by default
    // (`on_change: skip`) not ingested again.
    let rewritten = ws.path().join("rewritten");
    std::fs::create_dir_all(&rewritten).unwrap();
    let shorter: String = late.lines().take(10).map(|l| format!("{l}\n")).collect();
    std::fs::write(rewritten.join("orders_late.jsonl"), shorter).unwrap();
    s3.upload(&rewritten, "raw2", "shop/orders");
    let report = ws.run("moved.yaml").report();
    let orders = table(&report, "bronze.orders");
    assert_eq!(
        orders["files_changed"]["files"],
        json!(["orders_late.jsonl"])
    );
    assert_eq!(orders["files_changed"]["action"], "skip");
    assert_eq!(files_read(&report), [0, 0, 0]);
    assert_eq!(versions(), before);
}

/// A wrong secret: the run fails naming the source and what the store said, but never the
/// secret, even in an info-level log; no table changes.
#[test]
fn a_source_the_store_refuses_fails_the_run_naming_it() {
    let (_s3, ws) = example_on_s3(2_000, 2);
    let wrong = "wrong-secret-6f1d0c2a";
    ws.set_env("AWS_SECRET_ACCESS_KEY", wrong);
    ws.set_env("MEDALLION_LOG", "info");
    let run = ws.run("pipeline.yaml");
    let said = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        !said.contains(wrong),
        "the secret is in the output:\n{said}"
    );
    assert_ne!(run.code, 0, "{}", run.stdout);
    let report = run.report();
    let orders = table(&report, "bronze.orders");
    let error = orders["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("source 'ecommerce_api'") && error.contains("s3://raw/shop/orders/"),
        "{orders:#}"
    );
}

/// On a cluster of two executors, with the sources and the lake on S3 and gold on Ballista
/// reading S3 files: an executor killed while it reads objects for bronze loses and doubles
/// nothing, and every table equals a local run's.
#[test]
fn a_cluster_on_s3_survives_a_killed_executor_and_equals_a_local_run() {
    let (s3, ws) = example_on_s3(20_000, 8);
    let spec = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    let ballista = "gold:\n  - name: customer_360\n";
    assert!(spec.contains(ballista), "{spec}");
    ws.write(
        "pipeline.yaml",
        &spec.replace(ballista, &format!("{ballista}    engine: ballista\n")),
    );
    s3.endpoint_into(&ws);
    ws.set_env("MEDALLION_ALLOW_SOURCES", "s3://raw/shop");
    ws.set_env("MEDALLION_ALLOW_LAKES", "s3://lake");
    let mut cluster = Cluster::start(&ws, 1, 2);
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let victim = cluster.executor_running("bronze.orders");
    cluster.executors[victim].kill();
    cluster.add_executor();
    let status = cluster.wait_after_lost_task(&ws, &run_id);
    let gold = table(&status["report"], "gold.customer_360");
    assert_eq!(gold["engine"], "ballista", "{gold:#}");
    // The store's secret reaches every process (in its environment) and appears nowhere:
    // no log line, no run record.
    for process in cluster.coordinators.iter().chain(&cluster.executors) {
        let log = process.log_text();
        assert!(
            !log.is_empty() && !log.contains(medallion_tests::s3::SECRET_KEY),
            "{}",
            process.name
        );
    }
    assert!(!status.to_string().contains(medallion_tests::s3::SECRET_KEY));
    assert!(
        !ws.path().join("lake").exists(),
        "nothing may be written locally"
    );
    assert_same_tables_as_local(&s3, &ws, &cluster.logs());
}

/// Issue 17: two writers committing to one table on S3 at once. A user's own writer (Python
/// deltalake) appends to a bronze table while a run ingests into it, after the run read the
/// table's version: both writers' commits land (the store's conditional PUT refuses a second
/// commit of one version; the later writer commits again on top), nothing lost or doubled.
#[test]
fn a_writer_committing_beside_a_run_on_s3_loses_nothing() {
    let ws = Workspace::new();
    let s3 = S3Server::s3s_fs(&ws.path().join("s3"));
    s3.create_bucket("raw");
    s3.create_bucket("lake");
    s3.credentials_into(&ws);
    ws.write(
        "p.yaml",
        &format!(
            "pipeline: feed\nlake: {{ root: s3://lake, storage_options: {} }}\nsources:\n\
             \x20 - {{ name: api, format: json, path: s3://raw/feed/*.jsonl }}\n\
             bronze:\n  - {{ name: events, source: api, files_per_task: 1 }}\n",
            s3.endpoint_options()
        ),
    );
    const LINES: usize = 5_000;
    let batch = |dir: &str, files: std::ops::Range<usize>| {
        for f in files {
            let lines: String = (0..LINES)
                .map(|n| {
                    format!(
                        "{{\"id\": {n}, \"file\": {f}, \"v\": \"{}\"}}\n",
                        "x".repeat(40)
                    )
                })
                .collect();
            ws.write(&format!("{dir}/e_{f}.jsonl"), &lines);
        }
        s3.upload(&ws.path().join(dir), "raw", "feed");
    };
    batch("first", 0..1);
    let first = ws.run("p.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    batch("second", 1..13);

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/other_writer.py");
    let mut writer = std::process::Command::new(medallion_tests::python())
        .arg(script)
        .args(["s3://lake/bronze/events", "3", "100"])
        .env("DELTA_STORAGE_OPTIONS", s3.reader_options().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    let mut out = std::io::BufReader::new(writer.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let run = ws.run("p.yaml");
    let mut versions = String::new();
    std::io::Read::read_to_string(&mut out, &mut versions).unwrap();
    let written = writer.wait_with_output().unwrap();
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    assert_eq!(metric(&report, "bronze.events", "files_read"), 12);

    let events = read_delta("s3://lake/bronze/events", Some(&s3.reader_options()));
    assert_eq!(events["readers_agree"], true);
    let mut per_file = std::collections::BTreeMap::<String, usize>::new();
    for row in events["rows"].as_array().unwrap() {
        *per_file
            .entry(row["_source_file"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let mut expected: std::collections::BTreeMap<String, usize> =
        (0..13).map(|f| (format!("e_{f}.jsonl"), LINES)).collect();
    expected.extend((0..3).map(|n| (format!("other-{n}"), 100)));
    assert_eq!(
        per_file, expected,
        "the other writer committed at versions {versions}"
    );
    // Newest first. The other writer began once the run had read the table: any of its
    // commits older than the run's proves the two raced, and the run committed again on top.
    let ours: Vec<bool> = serde_json::from_value(events["medallion_commits"].clone()).unwrap();
    assert_eq!(ours.len(), 5, "{ours:?}");
    let newest_of_ours = ours.iter().position(|m| *m).unwrap();
    assert!(
        ours[newest_of_ours..].contains(&false),
        "the run committed before the other writer: no race ({ours:?}, newest first)"
    );
}

/// Issue 17: `az://` as well as `s3://`. The example with its sources and its lake in
/// containers of Azurite (the Azure Storage emulator), the account only in the environment:
/// its tables equal a local-disk run's, read back over Azure by both readers; a second run
/// reads nothing.
#[test]
fn sources_and_lake_on_azure_equal_a_local_run() {
    let (ws, _) = Workspace::example(2_000, 2);
    let azure = Azurite::start(&ws.path().join("azurite"));
    azure.create_container("raw");
    azure.create_container("lake");
    azure.upload(&ws.path().join("data"), "raw", "shop");
    azure.into_env(&ws);
    let local = std::fs::read_to_string(ws.path().join("pipeline.yaml")).unwrap();
    ws.write("local.yaml", &local);
    let lake = format!(
        "lake: {{ root: az://lake, storage_options: {} }} ",
        azure.endpoint_options()
    );
    let on_azure = local
        .replace("lake: ./lake ", &lake)
        .replace("path: data/", "path: az://raw/shop/");
    assert_ne!(on_azure, local);
    ws.write("pipeline.yaml", &on_azure);

    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(files_read(&run.report()), [2, 1, 1]);
    assert!(
        !ws.path().join("lake").exists(),
        "nothing may be written locally"
    );
    let local = ws.run("local.yaml");
    assert_eq!(local.code, 0, "{}", local.stderr);
    let options = azure.reader_options();
    // A table of each layer (the S3 tests compare all eight; the store is the only difference).
    for table in ["bronze/orders", "silver/orders", "gold/customer_360"] {
        assert!(EXAMPLE_TABLES.contains(&table));
        let ours = read_delta(&format!("az://lake/{table}"), Some(&options));
        let reference = ws.read_table(&format!("lake/{table}"));
        assert_same_example_table(table, &ours, &reference, &run.stderr);
    }
    let again = ws.run("pipeline.yaml");
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(files_read(&again.report()), [0, 0, 0]);
}
