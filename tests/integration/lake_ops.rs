//! Issue 19: operating the lake's tables - their history, restoring an earlier version,
//! vacuuming what no version needs and compacting small files.

use std::collections::BTreeSet;
use std::time::Duration;

use medallion_tests::{Workspace, python_json, rows_without_run_columns};
use serde_json::Value;

use crate::fixture::{CUSTOMERS, ORDERS_1, ORDERS_2, ORDERS_3, PRODUCTS, SPEC, shop};

/// Rows of a table as both independent readers see them (they must agree).
fn rows(ws: &Workspace, rel: &str) -> Value {
    let table = ws.read_table(rel);
    assert_eq!(table["readers_agree"], true, "{rel}: {table:#}");
    table["rows"].clone()
}

/// Rows of one version of a table, as both independent readers see them.
fn rows_at(ws: &Workspace, rel: &str, version: u64) -> Value {
    let table = ws.read_table_at(rel, version);
    assert_eq!(table["readers_agree"], true, "{rel}@{version}");
    table["rows"].clone()
}

/// `medallion history` lists what each version did (newest first, the run that made it, rows
/// in and out); `medallion restore` brings an earlier version's rows back as a new version,
/// read back by Python deltalake and DuckDB; the next run computes the tables that read the
/// restored one again and brings it up to date from its inputs.
#[test]
fn history_lists_each_version_and_restore_brings_one_back_as_a_new_version() {
    let ws = shop();
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_run = first.report()["run_id"].as_str().unwrap().to_string();
    let orders_then = rows(&ws, "lake/silver/orders");
    let gold_then = rows(&ws, "lake/gold/customer_360");

    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let second_run = second.report()["run_id"].as_str().unwrap().to_string();
    let orders_now = rows(&ws, "lake/silver/orders");
    assert_ne!(orders_now, orders_then);

    let history = ws.medallion(&["history", "silver.orders", "--output", "json"]);
    assert_eq!(history.code, 0, "{}", history.stderr);
    let versions: Value = serde_json::from_str(&history.stdout).unwrap();
    let versions = versions.as_array().unwrap();
    let latest = versions[0]["version"].as_u64().unwrap();
    assert_eq!(versions.len() as u64, latest + 1, "{versions:#?}");
    assert_eq!(versions[0]["run_id"], second_run.as_str());
    assert_eq!(versions.last().unwrap()["run_id"], first_run.as_str());
    // The second run's merge: order 6 new, order 2 replaced (its old row removed).
    assert!(
        versions[0]["rows_added"].as_u64().unwrap() >= 2,
        "{versions:#?}"
    );
    assert!(
        versions[0]["rows_removed"].as_u64().unwrap() >= 1,
        "{versions:#?}"
    );
    let text = ws.medallion(&["history", "silver.orders"]);
    assert!(
        text.stdout.contains("VERSION") && text.stdout.contains(&second_run),
        "{}",
        text.stdout
    );

    // Bring back the first run's version: a new version with its rows.
    let first_version = versions.last().unwrap()["version"]
        .as_u64()
        .unwrap()
        .to_string();
    let restored = ws.medallion(&[
        "restore",
        "silver.orders",
        "--version",
        &first_version,
        "--output",
        "json",
    ]);
    assert_eq!(restored.code, 0, "{}", restored.stderr);
    let restored: Value = serde_json::from_str(&restored.stdout).unwrap();
    assert_eq!(restored["version"].as_u64().unwrap(), latest + 1);
    assert_eq!(rows(&ws, "lake/silver/orders"), orders_then);
    let history = ws.medallion(&[
        "history",
        "silver.orders",
        "--limit",
        "1",
        "--output",
        "json",
    ]);
    let newest: Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(newest[0]["operation"], "RESTORE", "{newest:#}");

    // The next run: silver.orders catches up with bronze's rows since that version (nothing
    // is ingested again), and gold, which read it, is computed again from it.
    let gold_version = ws.read_table("lake/gold/customer_360")["version"].clone();
    let third = ws.run("pipeline.yaml");
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(rows(&ws, "lake/silver/orders"), orders_now);
    assert_ne!(
        ws.read_table("lake/gold/customer_360")["version"],
        gold_version
    );
    assert_ne!(rows(&ws, "lake/gold/customer_360"), gold_then);

    // Wrong requests name what is wrong and change nothing.
    let before = ws.lake_files("lake");
    for (args, expected) in [
        (
            vec!["restore", "silver.orders", "--version", "999"],
            "not before the latest version",
        ),
        (
            vec!["restore", "gold.nope", "--version", "0"],
            "has no table gold.nope",
        ),
        (vec!["history", "platinum.x"], "unknown layer 'platinum'"),
    ] {
        let out = ws.medallion(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
    assert_eq!(ws.lake_files("lake"), before);
}

const SILVER_AND_GOLD: [&str; 5] = [
    "silver/orders",
    "silver/customers",
    "silver/products",
    "gold/customer_360",
    "gold/product_performance",
];

/// Files of a table that no version of its log ever added (Python, reading the log itself).
fn orphans(ws: &Workspace, table: &str) -> Vec<String> {
    let dir = ws.path().join("lake").join(table);
    let found = python_json(&["orphans", dir.to_str().unwrap()]);
    serde_json::from_value(found["orphans"].clone()).unwrap()
}

/// What `medallion vacuum --output json` said about each table: (table, path, why).
fn vacuumed(out: &medallion_tests::Invocation) -> BTreeSet<(String, String, String)> {
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut files = BTreeSet::new();
    for t in done["tables"].as_array().unwrap() {
        for f in t["files"].as_array().unwrap() {
            let table = t["table"].as_str().unwrap().replace('.', "/");
            let path = f["path"].as_str().unwrap().to_string();
            files.insert((table, path, f["why"].as_str().unwrap().to_string()));
        }
    }
    files
}

/// `medallion vacuum` deletes exactly what no version within retention needs: the files a
/// SIGKILLed run left in its dispatch directories (any age: the run lease keeps runs out), an
/// untracked file older than the retention (a newer one stays), and - only with a retention
/// shorter than the table's, allowed explicitly - the files of versions removed since
/// (silver.customers: each full refresh rewrites it). The
/// latest version and every version within retention read the same before and after, in
/// both independent readers; a dry run lists the same files and deletes none.
#[test]
fn vacuum_deletes_what_no_retained_version_needs_and_what_killed_runs_left() {
    let (ws, _) = Workspace::example(20_000, 4);
    let full_refresh = ["run", "pipeline.yaml", "--full-refresh", "--executors", "2"];
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let first_version = ws.read_table("lake/silver/customers")["version"]
        .as_u64()
        .unwrap();
    let second = ws.medallion(&full_refresh);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let staging = ws.path().join("lake/_medallion/staging");
    let staged = || -> Vec<_> {
        std::fs::read_dir(&staging)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        staged(),
        Vec::<std::ffi::OsString>::new(),
        "a finished run left its staging"
    );

    // Full refreshes killed once a silver or gold task has written a file, until one leaves
    // uncommitted files behind (the table may commit between the file and the kill).
    let written = || -> usize {
        SILVER_AND_GOLD
            .iter()
            .map(|t| medallion_tests::parquet_files(&ws.path().join("lake").join(t)))
            .sum()
    };
    let mut left = BTreeSet::new();
    for _ in 0..8 {
        let before = written();
        ws.killed_when(&full_refresh, || written() > before);
        left = SILVER_AND_GOLD
            .iter()
            .flat_map(|t| orphans(&ws, t).into_iter().map(|p| (t.to_string(), p)))
            .collect();
        if !left.is_empty() {
            break;
        }
    }
    assert!(!left.is_empty(), "no killed run left files behind");
    assert!(left.iter().all(|(_, p)| p.contains('/')), "{left:?}");

    // Untracked files outside dispatch directories: one older than the retention, one new.
    let old = ws.write(
        "lake/silver/customers/stray-old.parquet",
        "not a table file",
    );
    let month_ago = std::time::SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(month_ago)
        .unwrap();
    ws.write(
        "lake/silver/customers/stray-new.parquet",
        "not a table file",
    );

    let latest: Vec<Value> = SILVER_AND_GOLD
        .iter()
        .map(|t| rows(&ws, &format!("lake/{t}")))
        .collect();
    let customers_then = rows_at(&ws, "lake/silver/customers", first_version);

    let mut expected: BTreeSet<_> = left
        .iter()
        .map(|(t, p)| (t.clone(), p.clone(), "abandoned".to_string()))
        .collect();
    expected.insert((
        "silver/customers".into(),
        "stray-old.parquet".into(),
        "untracked".into(),
    ));
    let before = ws.lake_files("lake");
    let dry = vacuumed(&ws.medallion(&["vacuum", "--dry-run", "--output", "json"]));
    assert_eq!(dry, expected);
    assert_eq!(ws.lake_files("lake"), before, "a dry run deleted files");

    let done = vacuumed(&ws.medallion(&["vacuum", "--output", "json"]));
    assert_eq!(done, expected);
    assert_eq!(staged(), Vec::<std::ffi::OsString>::new());
    for t in SILVER_AND_GOLD {
        let remaining = orphans(&ws, t);
        let expected: Vec<String> = if t == "silver/customers" {
            vec!["stray-new.parquet".into()]
        } else {
            vec![]
        };
        assert_eq!(remaining, expected, "{t}");
    }
    let after: Vec<Value> = SILVER_AND_GOLD
        .iter()
        .map(|t| rows(&ws, &format!("lake/{t}")))
        .collect();
    assert!(after == latest, "the latest versions changed");
    assert!(
        rows_at(&ws, "lake/silver/customers", first_version) == customers_then,
        "a version within retention lost files"
    );
    // Nothing is left to delete, and the next run finds every table up to date.
    assert_eq!(
        vacuumed(&ws.medallion(&["vacuum", "--dry-run", "--output", "json"])),
        BTreeSet::new()
    );

    // Below the table's retention only when asked for: then the first version's files go.
    let short = ws.medallion(&["vacuum", "silver.customers", "--retention", "0s"]);
    assert_eq!(short.code, 2, "{}", short.stderr);
    assert!(
        short.stderr.contains("delta.deletedFileRetentionDuration"),
        "{}",
        short.stderr
    );
    let expired = vacuumed(&ws.medallion(&[
        "vacuum",
        "silver.customers",
        "--retention",
        "0s",
        "--allow-short-retention",
        "--output",
        "json",
    ]));
    let stray_new = (
        "silver/customers".into(),
        "stray-new.parquet".into(),
        "untracked".into(),
    );
    assert!(expired.contains(&stray_new), "{expired:?}");
    assert!(expired.len() > 1, "{expired:?}");
    for (table, path, why) in &expired {
        assert!(
            *why == "expired" || path == "stray-new.parquet",
            "{expired:?}"
        );
        assert!(!ws.path().join("lake").join(table).join(path).exists());
    }
    assert_eq!(rows(&ws, "lake/silver/customers"), latest[1]);
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    for (t, rows_before) in SILVER_AND_GOLD.iter().zip(&latest) {
        assert_eq!(&rows(&ws, &format!("lake/{t}")), rows_before, "{t}");
    }
}

/// `medallion optimize` compacts the small files runs leave (one per task and run) into
/// fewer, in one commit per table that changes no rows (both readers read the same rows
/// before and after), clustered by `--sort-by` columns when given; a column the table lacks
/// is named in the error and changes nothing. The next run computes nothing again.
#[test]
fn optimize_compacts_small_files_without_changing_rows() {
    let ws = shop();
    for i in 0..4u32 {
        ws.write(
            &format!("data/orders/more_{i}.jsonl"),
            &more_orders(100 + 2 * i),
        );
        let run = ws.run("pipeline.yaml");
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let tables = ["bronze/orders", "silver/orders", "gold/customer_360"];
    let before: Vec<Value> = tables
        .iter()
        .map(|t| ws.read_table(&format!("lake/{t}")))
        .collect();
    let bronze_files = before[0]["num_files"].as_u64().unwrap();
    assert!(bronze_files >= 5, "{}", before[0]["num_files"]);

    let out = ws.medallion(&["optimize", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let done: Value = serde_json::from_str(&out.stdout).unwrap();
    let bronze = done
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "bronze.orders")
        .unwrap();
    assert_eq!(bronze["files_removed"], bronze_files, "{done:#}");
    assert_eq!(bronze["files_added"], 1, "{done:#}");
    for (t, then) in tables.iter().zip(&before) {
        let now = ws.read_table(&format!("lake/{t}"));
        assert_eq!(now["readers_agree"], true, "{t}");
        assert!(now["rows"] == then["rows"], "{t}: optimize changed rows");
        assert!(
            now["num_files"].as_u64() <= then["num_files"].as_u64(),
            "{t}"
        );
    }
    assert_eq!(
        ws.read_table("lake/bronze/orders")["num_files"],
        1,
        "bronze.orders"
    );

    // Clustering by a column, and a column the table does not have.
    let sorted = ws.medallion(&["optimize", "silver.orders", "--sort-by", "customer_id"]);
    assert_eq!(sorted.code, 0, "{}", sorted.stderr);
    assert!(rows(&ws, "lake/silver/orders") == before[1]["rows"]);
    let lake = ws.lake_files("lake");
    let wrong = ws.medallion(&["optimize", "silver.orders", "--sort-by", "nope"]);
    assert_eq!(wrong.code, 2, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("nope"), "{}", wrong.stderr);
    assert_eq!(ws.lake_files("lake"), lake);

    // Inputs compacted since a table was computed hold the same rows: nothing to compute.
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    for t in run.report()["tables"].as_array().unwrap() {
        assert_eq!(t["status"], "up_to_date", "{t:#}");
    }
}

/// `maintenance:` in the spec: after each run the tables it committed are compacted once they
/// have `min_files` files (silver.orders clustered by customer), vacuumed, and checkpointed
/// every `checkpoint_interval` commits. Five runs give the same rows in every table as a twin
/// lake without maintenance (both readers); a run with nothing new computes nothing; a copy of
/// a table whose JSON commits up to its checkpoint are deleted reads the same in both
/// readers, so the checkpoint alone holds the table's state.
#[test]
fn maintenance_after_runs_compacts_and_checkpoints_without_changing_rows() {
    let maintained = Workspace::new();
    let plain = Workspace::new();
    maintained.write(
        "pipeline.yaml",
        &format!(
            "{SPEC}maintenance:\n  checkpoint_interval: 3\n  optimize:\n    min_files: 3\n    \
             sort_by: {{ silver.orders: [customer_id] }}\n  vacuum: {{ retention: 7d }}\n"
        ),
    );
    plain.write("pipeline.yaml", SPEC);
    let mut compacted = 0;
    let mut checkpoints = 0;
    for (i, batch) in [
        ORDERS_1,
        ORDERS_2,
        ORDERS_3,
        &more_orders(200),
        &more_orders(300),
    ]
    .into_iter()
    .enumerate()
    {
        let mut reports = Vec::new();
        for ws in [&maintained, &plain] {
            ws.write("data/customers.csv", CUSTOMERS);
            ws.write("data/products.csv", PRODUCTS);
            ws.write(&format!("data/orders/batch_{i}.jsonl"), batch);
            let run = ws.run("pipeline.yaml");
            assert_eq!(run.code, 0, "{}", run.stderr);
            reports.push(run.report());
        }
        for t in reports[0]["tables"].as_array().unwrap() {
            let m = &t["maintenance"];
            assert!(m.get("error").is_none(), "{t:#}");
            compacted += m.get("compacted").is_some() as usize;
            checkpoints += m.get("checkpoint").is_some() as usize;
        }
    }
    assert!(
        compacted > 0 && checkpoints > 0,
        "{compacted} {checkpoints}"
    );
    for t in [
        "bronze/orders",
        "silver/orders",
        "silver/customers",
        "gold/customer_360",
        "gold/product_performance",
    ] {
        let rel = format!("lake/{t}");
        let (ours, theirs) = (maintained.read_table(&rel), plain.read_table(&rel));
        assert_eq!(ours["readers_agree"], true, "{t}");
        assert!(
            rows_without_run_columns(&ours) == rows_without_run_columns(&theirs),
            "{t}"
        );
    }
    let bronze = maintained.read_table("lake/bronze/orders");
    assert!(bronze["num_files"].as_u64().unwrap() < 3, "{bronze:#}");
    assert!(
        bronze["history"]
            .as_array()
            .unwrap()
            .contains(&"OPTIMIZE".into())
    );

    let again = maintained.run("pipeline.yaml");
    assert_eq!(again.code, 0, "{}", again.stderr);
    for t in again.report()["tables"].as_array().unwrap() {
        assert_eq!(t["status"], "up_to_date", "{t:#}");
    }

    // The checkpoint alone: a copy of the table without the JSON commits it covers.
    let log = maintained.path().join("lake/bronze/orders/_delta_log");
    let last: Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    let checkpoint = last["version"].as_u64().unwrap();
    let copy = maintained.path().join("copy");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(maintained.path().join("lake/bronze/orders"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    for version in 0..=checkpoint {
        std::fs::remove_file(copy.join(format!("_delta_log/{version:020}.json"))).unwrap();
    }
    assert!(rows(&maintained, "copy") == rows(&maintained, "lake/bronze/orders"));
}

/// Two orders with ids from `first`, for one more batch.
fn more_orders(first: u32) -> String {
    (first..first + 2)
        .map(|id| {
            format!(
                r#"{{"order_id": {id}, "customer_id": 11, "product_id": 100, "quantity": 1, "amount": 4, "status": "paid", "email": "b@y.com", "created_at": "2024-03-01T10:00:00Z", "updated_at": "2024-03-01T10:00:00Z"}}"#
            ) + "\n"
        })
        .collect()
}

/// What `medallion plan` says, table by table, against the report of the run that follows:
/// the tables it would change are the ones the run commits, bronze's new files are the ones
/// the run reads, silver and gold refresh as predicted (incremental or full). The detailed
/// exit code is 2 while a run would change something, 0 once nothing would.
#[test]
fn plan_says_what_the_run_that_follows_does() {
    let ws = shop();
    let check = |ws: &Workspace| {
        let plan = ws.medallion(&["plan", "pipeline.yaml", "--output", "json"]);
        assert_eq!(plan.code, 0, "{}", plan.stderr);
        let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
        let detailed = ws.medallion(&["plan", "pipeline.yaml", "--detailed-exitcode"]);
        assert_eq!(detailed.code, 2, "{}", detailed.stdout);
        let run = ws.run("pipeline.yaml");
        assert_eq!(run.code, 0, "{}", run.stderr);
        let report = run.report();
        let mut changed = 0;
        for planned in plan["tables"].as_array().unwrap() {
            let name = planned["table"].as_str().unwrap();
            let did = medallion_tests::table(&report, name);
            let changes = planned["action"] != "up_to_date";
            changed += changes as usize;
            assert_eq!(
                changes,
                did["status"] == "committed",
                "{name}: {planned} / {did}"
            );
            if name.starts_with("bronze.") {
                assert_eq!(planned["new_files"], did["metrics"]["files_read"], "{name}");
            } else if changes {
                assert_eq!(planned["refresh"]["kind"], did["refresh"]["kind"], "{name}");
            }
        }
        assert!(changed > 0);
    };
    check(&ws);
    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    check(&ws);
    let nothing = ws.medallion(&["plan", "pipeline.yaml", "--detailed-exitcode"]);
    assert_eq!(nothing.code, 0, "{}", nothing.stdout);
    assert!(
        nothing.stdout.contains("nothing to do"),
        "{}",
        nothing.stdout
    );
}
