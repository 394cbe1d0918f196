//! Issue 19: operating the lake's tables - their history, and restoring an earlier version.

use serde_json::Value;

use crate::fixture::{ORDERS_3, shop};

/// Rows of a table as both independent readers see them (they must agree).
fn rows(ws: &medallion_tests::Workspace, rel: &str) -> Value {
    let table = ws.read_table(rel);
    assert_eq!(table["readers_agree"], true, "{rel}: {table:#}");
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
