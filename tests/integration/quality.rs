//! Quality check severities: critical stops the commit, warning and info are reported.

use medallion_tests::table;
use serde_json::Value;

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

/// The shop spec with `checks` (YAML flow mappings) added to silver orders.
fn with_order_checks(checks: &[&str]) -> String {
    let unique = "      - { name: id_unique, check: unique, column: order_id, severity: critical }";
    let mut lines = vec![unique.to_string()];
    lines.extend(checks.iter().map(|c| format!("      - {c}")));
    SPEC.replace(unique, &lines.join("\n"))
}

/// Every check type on the shop's 3 silver orders (1 paid, 1 unknown, 1 shipped; emails
/// ann@x.com twice and bob@y.com; order dates in January 2024; customers 10 and 11).
#[test]
fn every_check_type_counts_what_fails() {
    let ws = shop();
    ws.write(
        "pipeline.yaml",
        &with_order_checks(&[
            "{ name: known_status, check: accepted_values, column: status, values: [paid, shipped], severity: warning }",
            "{ name: x_emails, check: regex, column: email, pattern: '^[a-z]+@x\\.com$', severity: warning }",
            "{ name: at_least_5, check: row_count, min: 5, severity: warning }",
            "{ name: one_to_ten, check: row_count, min: 1, max: 10, severity: info }",
            "{ name: fresh_day, check: freshness, column: order_date, max_age: 1day, severity: warning }",
            "{ name: fresh_ages, check: freshness, column: order_date, max_age: 100000days, severity: info }",
            "{ name: known_customer, check: foreign_key, column: customer_id, references: silver.customers.customer_id, severity: critical }",
            "{ name: product_as_customer, check: foreign_key, column: product_id, references: silver.customers.customer_id, severity: warning }",
        ]),
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    let silver = table(&report, "silver.orders");
    assert_eq!(silver["status"], "committed", "{silver:#}");
    let check = |name: &str| {
        silver["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {silver:#}"))
            .clone()
    };
    for (name, passed, failing) in [
        ("known_status", false, 1),
        ("x_emails", false, 1),
        ("at_least_5", false, 0),
        ("one_to_ten", true, 0),
        ("fresh_day", false, 0),
        ("fresh_ages", true, 0),
        ("known_customer", true, 0),
        ("product_as_customer", false, 3),
    ] {
        let c = check(name);
        assert_eq!(
            (c["passed"].as_bool(), c["failing_rows"].as_u64()),
            (Some(passed), Some(failing)),
            "{c:#}"
        );
        assert_eq!(c["total_rows"], 3, "{c:#}");
    }
    assert_eq!(check("at_least_5")["detail"], "3 rows, expected at least 5");
    let fresh = check("fresh_day")["detail"].as_str().unwrap().to_string();
    assert!(
        fresh.starts_with("newest \"order_date\" is 2024-01-05 00:00:00,")
            && fresh.ends_with("old; at most 1day allowed"),
        "{fresh}"
    );
    // The foreign keys made silver.orders wait for silver.customers.
    let customers = table(&report, "silver.customers");
    let ended =
        customers["started_ms"].as_u64().unwrap() + customers["duration_ms"].as_u64().unwrap();
    assert!(
        silver["started_ms"].as_u64().unwrap() >= ended,
        "{report:#}"
    );

    // A critical foreign key that fails stops the commit.
    let strict = shop();
    strict.write(
        "pipeline.yaml",
        &with_order_checks(&[
            "{ name: product_as_customer, check: foreign_key, column: product_id, references: silver.customers.customer_id, severity: critical }",
        ]),
    );
    assert_eq!(strict.run("pipeline.yaml").code, 1);
    assert!(!strict.has_table("lake/silver/orders"));
}

#[test]
fn check_options_are_validated_with_their_line() {
    let ws = shop();
    for (check, message) in [
        (
            "{ name: c, check: regex, column: email, pattern: '([a-z', severity: info }",
            "checks[1].pattern: invalid regex",
        ),
        (
            "{ name: c, check: freshness, column: order_date, max_age: soon, severity: info }",
            "checks[1].max_age: 'soon' is not a duration",
        ),
        (
            "{ name: c, check: foreign_key, column: customer_id, references: silver.clients.id, severity: info }",
            "checks[1].references: unknown table 'silver.clients'",
        ),
        (
            "{ name: c, check: accepted_values, column: status, severity: info }",
            "checks[1]: an accepted_values check needs a list of 'values'",
        ),
        (
            "{ name: c, check: row_count, severity: info }",
            "checks[1]: a row_count check needs 'min', 'max' or both",
        ),
    ] {
        ws.write("bad.yaml", &with_order_checks(&[check]));
        let out = ws.medallion(&["validate", "bad.yaml"]);
        assert_eq!(out.code, 2, "{check}: {}", out.stderr);
        assert!(
            out.stderr.contains("bad.yaml:38:") && out.stderr.contains(message),
            "{check}: {}",
            out.stderr
        );
    }
}

/// Each run appends its check results to `lake/_medallion/check_results`, a Delta table
/// the independent readers read, and `medallion checks <run>` prints that run's rows.
#[test]
fn check_results_are_kept_per_run_in_a_delta_table() {
    let ws = shop();
    ws.write("pipeline.yaml", &with_amount_check("warning"));
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    ws.write("data/orders/orders_3.jsonl", crate::fixture::ORDERS_3);
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let run_id =
        |inv: &medallion_tests::Invocation| inv.report()["run_id"].as_str().unwrap().to_string();
    let (first_id, second_id) = (run_id(&first), run_id(&second));

    let history = ws.read_table("lake/_medallion/check_results");
    let rows = history["rows"].as_array().unwrap();
    // Both runs check silver.orders (the spec's two checks on it; no other table has any).
    let of = |run: &str| -> Vec<&Value> { rows.iter().filter(|r| r["run_id"] == run).collect() };
    for run in [&first_id, &second_id] {
        let checks = of(run);
        assert_eq!(checks.len(), 2, "{run}: {rows:#?}");
        let amount = checks
            .iter()
            .find(|r| r["check"] == "amount_small")
            .unwrap();
        assert_eq!(amount["table"], "silver.orders");
        assert_eq!(amount["check_type"], "range");
        assert_eq!(amount["severity"], "warning");
        assert_eq!(amount["passed"], false);
        assert_eq!(amount["rows_failed"], 1);
        assert_eq!(amount["pipeline"], "shop");
    }
    // The second run merged order 6 in: 4 rows checked.
    let second_amount = of(&second_id)
        .into_iter()
        .find(|r| r["check"] == "amount_small")
        .unwrap()
        .clone();
    assert_eq!(second_amount["rows_checked"], 4);

    let shown = ws.medallion(&["checks", &second_id, "--output", "json"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 2);
    assert!(
        shown
            .iter()
            .any(|r| r["check"] == "amount_small" && r["rows_checked"] == 4)
    );
    let unknown = ws.medallion(&["checks", "no-such-run"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown
            .stderr
            .contains("no check results for run 'no-such-run'"),
        "{}",
        unknown.stderr
    );
}

/// `drop` and `quarantine` take failing rows out of silver before the latest row per key is
/// kept: order 2 (status unknown) and order 1's older version (placed) are dropped, both
/// versions of order 4 (amount 30) go to `silver/orders__quarantine` with the run id and the
/// checks they failed; only order 1's latest version is committed, and gold follows.
#[test]
fn drop_and_quarantine_take_failing_rows_out() {
    let ws = shop();
    ws.write(
        "pipeline.yaml",
        &with_order_checks(&[
            "{ name: amount_small, check: range, column: amount, max: 25, severity: warning, action: quarantine }",
            "{ name: status_known, check: accepted_values, column: status, values: [paid, shipped], severity: info, action: drop }",
        ]),
    );
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    let run_id = report["run_id"].as_str().unwrap();
    let silver = table(&report, "silver.orders");
    assert_eq!(silver["status"], "committed", "{silver:#}");
    assert_eq!(silver["metrics"]["rows_written"], 1);
    assert_eq!(silver["metrics"]["rows_dropped"], 2);
    assert_eq!(silver["metrics"]["rows_quarantined"], 2);
    // Five rows passed the filters: orders 1 and 4 twice each, and order 2.
    for (name, failing) in [("amount_small", 2), ("status_known", 3)] {
        let c = silver["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        assert_eq!(
            (
                c["passed"].as_bool(),
                c["failing_rows"].as_u64(),
                c["total_rows"].as_u64()
            ),
            (Some(false), Some(failing), Some(5)),
            "{c:#}"
        );
    }
    let orders = ws.read_table("lake/silver/orders");
    let ids: Vec<&Value> = orders["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["order_id"])
        .collect();
    assert_eq!(ids, [1]);

    let quarantine = ws.read_table("lake/silver/orders__quarantine");
    let mut rows = quarantine["rows"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["status"].to_string());
    assert_eq!(rows.len(), 2, "{quarantine:#}");
    // Both readers agree on the list; canonical form is its Python repr.
    for (row, (status, failed)) in rows.iter().zip([
        ("placed", "['amount_small', 'status_known']"),
        ("shipped", "['amount_small']"),
    ]) {
        assert_eq!(row["order_id"], 4);
        assert_eq!(row["amount"], 30.0);
        assert_eq!(row["status"], status);
        assert_eq!(row["_failed_checks"], failed);
        assert_eq!(row["_quarantine_run_id"], run_id);
        assert!(
            row["_quarantined_at"]
                .as_str()
                .is_some_and(|t| t.starts_with("20")),
            "{rows:#?}"
        );
    }

    // Gold sees only what silver kept: Ann's one order of 20.00.
    let gold = ws.read_table("lake/gold/customer_360");
    let ann = gold["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["customer_id"] == 10)
        .unwrap();
    assert_eq!(ann["total_orders"], 1);
    assert!(
        !gold["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["customer_id"] == 11)
    );

    // The check history says what each check did.
    let history = ws.read_table("lake/_medallion/check_results");
    let actions: Vec<(String, String)> = history["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["table"] == "silver.orders")
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        actions,
        [
            ("amount_small".to_string(), "quarantine".to_string()),
            ("id_unique".to_string(), "fail".to_string()),
            ("status_known".to_string(), "drop".to_string()),
        ]
    );
}

#[test]
fn drop_and_quarantine_need_row_checks_of_silver_or_gold() {
    let ws = shop();
    ws.write(
        "bad.yaml",
        &with_order_checks(&[
            "{ name: c, check: unique, column: email, severity: info, action: drop }",
        ]),
    );
    let out = ws.medallion(&["validate", "bad.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("checks[1].action: drop and quarantine apply to checks of single rows"),
        "{}",
        out.stderr
    );
    ws.write(
        "bad.yaml",
        &SPEC.replace(
            "  - { name: orders, source: api, files_per_task: 1 }",
            "  - name: orders\n    source: api\n    checks:\n      - { name: c, check: not_null, column: order_id, severity: info, action: quarantine }",
        ),
    );
    let out = ws.medallion(&["validate", "bad.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("bronze[0].checks[0].action: bronze keeps every raw row"),
        "{}",
        out.stderr
    );
}
