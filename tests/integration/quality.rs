//! Quality check severities: critical stops the commit, warning and info are reported.

use medallion_tests::table;

use crate::fixture::{SPEC, shop};

/// The shop spec with an extra check on silver orders: amounts must stay within 25.
fn with_amount_check(severity: &str) -> String {
    SPEC.replace(
        "      - { name: id_unique, check: unique, column: order_id, severity: critical }",
        &format!(
            "      - {{ name: id_unique, check: unique, column: order_id, severity: critical }}\n      \
             - {{ name: amount_small, check: range, column: amount, min: 0, max: 25, severity: {severity} }}"
        ),
    )
}

#[test]
fn critical_failure_stops_the_commit_and_what_reads_the_table() {
    let ws = shop();
    ws.write("pipeline.yaml", &with_amount_check("critical"));
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.report();
    assert_eq!(report["succeeded"], false);
    let silver = table(&report, "silver.orders");
    assert_eq!(silver["status"], "failed");
    assert!(
        silver["error"]
            .as_str()
            .unwrap()
            .contains("amount_small (1 rows)"),
        "{silver:#}"
    );
    let check = silver["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "amount_small")
        .unwrap();
    assert_eq!(check["passed"], false);
    assert_eq!(check["failing_rows"], 1);
    assert_eq!(check["total_rows"], 3);
    assert!(
        !ws.has_table("lake/silver/orders"),
        "nothing may be committed"
    );
    assert_eq!(table(&report, "gold.customer_360")["status"], "skipped");
    // Tables that do not read silver.orders still run.
    assert_eq!(table(&report, "silver.customers")["status"], "committed");
    // No data file of the rejected version is left behind.
    let leftovers = walk(&ws.path().join("lake/silver/orders"));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn critical_failure_on_an_existing_table_leaves_its_version() {
    let ws = shop();
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let before = ws.read_table("lake/silver/orders");
    ws.write("pipeline.yaml", &with_amount_check("critical"));
    ws.write("data/orders/orders_3.jsonl", crate::fixture::ORDERS_3);
    assert_eq!(ws.run("pipeline.yaml").code, 1);
    let after = ws.read_table("lake/silver/orders");
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["rows"], before["rows"]);
}

#[test]
fn warning_failure_is_reported_and_committed() {
    let ws = shop();
    ws.write("pipeline.yaml", &with_amount_check("warning"));
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    let silver = table(&report, "silver.orders");
    assert_eq!(silver["status"], "committed");
    let checks = silver["checks"].as_array().unwrap();
    let warn = checks.iter().find(|c| c["name"] == "amount_small").unwrap();
    assert_eq!(
        (warn["passed"].clone(), warn["failing_rows"].clone()),
        (false.into(), 1.into())
    );
    let unique = checks.iter().find(|c| c["name"] == "id_unique").unwrap();
    assert_eq!(unique["passed"], true);
    assert_eq!(ws.read_table("lake/silver/orders")["num_rows"], 3);

    // The same run as a person sees it.
    let fresh = shop();
    fresh.write("pipeline.yaml", &with_amount_check("warning"));
    let text = fresh.medallion(&["run", "pipeline.yaml"]);
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains("amount_small"))
        .unwrap_or_default();
    assert!(
        line.contains("warning") && line.contains("FAILED") && line.contains("1 of 3 rows"),
        "{}",
        text.stdout
    );
}

/// Every file under `dir` (none if it does not exist).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .flat_map(|p| if p.is_dir() { walk(&p) } else { vec![p] })
        .collect()
}
