//! Bad input gets a clear message, no panic, and leaves every table as it was.

use crate::fixture::{SPEC, shop};

fn assert_no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
}

#[test]
fn invalid_specs_name_file_line_and_field() {
    let ws = shop();
    ws.write(
        "bad.yaml",
        &SPEC.replace(
            "FROM silver.orders o JOIN silver.customers",
            "FROM silver.order o JOIN silver.customers",
        ),
    );
    let out = ws.medallion(&["validate", "bad.yaml"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("bad.yaml:"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("gold[0].sql: unknown table 'silver.order'"),
        "{}",
        out.stderr
    );
    // The location is the start of the SQL text, the line after `sql: |`.
    let line = SPEC
        .lines()
        .position(|l| l.contains("SELECT c.customer_id"))
        .unwrap()
        + 1;
    assert!(
        out.stderr.contains(&format!("bad.yaml:{line}:")),
        "line {line}: {}",
        out.stderr
    );

    ws.write(
        "typo.yaml",
        &SPEC.replace("    keys: [order_id]\n", "    key: [order_id]\n"),
    );
    let out = ws.medallion(&["run", "typo.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("typo.yaml:") && out.stderr.contains("key"),
        "{}",
        out.stderr
    );

    ws.write("cycle.yaml", &format!(
        "{SPEC}  - name: a\n    sql: SELECT * FROM gold.b\n  - name: b\n    sql: SELECT * FROM gold.a\n"
    ));
    let out = ws.medallion(&["validate", "cycle.yaml"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("dependency cycle: gold.a -> gold.b -> gold.a"),
        "{}",
        out.stderr
    );

    ws.write("merge.yaml", &SPEC.replace("    keys: [order_id]\n", ""));
    let out = ws.medallion(&["validate", "merge.yaml"]);
    assert!(
        out.stderr
            .contains("silver[0].mode: mode 'merge' needs 'keys'"),
        "{}",
        out.stderr
    );
    assert_no_panic(&out.stderr);
    assert!(
        !ws.path().join("lake").exists(),
        "validation must not touch the lake"
    );

    let ok = ws.medallion(&["validate", "pipeline.yaml"]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}

#[test]
fn missing_source_path_fails_before_any_table_changes() {
    let ws = shop();
    ws.write(
        "missing.yaml",
        &SPEC.replace("path: data/customers.csv", "path: data/crm/customers.csv"),
    );
    let out = ws.run("missing.yaml");
    assert_eq!(out.code, 1);
    assert_no_panic(&out.stderr);
    let report = out.report();
    let error = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|t| t["error"].as_str())
        .unwrap()
        .to_string();
    assert!(
        error.contains("source 'crm'") && error.contains("data/crm/customers.csv"),
        "{error}"
    );
    assert_eq!(
        ws.lake_files("lake"),
        Default::default(),
        "no table may be written when a source is missing"
    );
}

#[test]
fn a_value_that_does_not_fit_its_type_names_table_column_and_value() {
    let ws = shop();
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let silver_before = ws.read_table("lake/silver/orders");
    let gold_before = ws.read_table("lake/gold/customer_360");
    ws.write(
        "data/orders/orders_3.jsonl",
        r#"{"order_id": 7, "customer_id": 10, "product_id": 100, "quantity": "three", "amount": 3, "status": "paid", "email": "a@x.com", "created_at": "2024-02-01T10:00:00Z", "updated_at": "2024-02-01T10:00:00Z"}
"#,
    );
    let out = ws.run("pipeline.yaml");
    assert_eq!(out.code, 1);
    assert_no_panic(&out.stderr);
    let report = out.report();
    let silver = medallion_tests::table(&report, "silver.orders");
    let error = silver["error"].as_str().unwrap();
    assert!(
        error.contains("silver.orders")
            && error.contains("'quantity'")
            && error.contains("'three'")
            && error.contains("orders_3.jsonl"),
        "{error}"
    );
    // The raw row is in bronze (that is what bronze is for); nothing downstream changed.
    assert_eq!(
        medallion_tests::table(&report, "bronze.orders")["status"],
        "committed"
    );
    let silver_after = ws.read_table("lake/silver/orders");
    assert_eq!(silver_after["version"], silver_before["version"]);
    assert_eq!(silver_after["rows"], silver_before["rows"]);
    assert_eq!(
        ws.read_table("lake/gold/customer_360")["version"],
        gold_before["version"]
    );
}

#[test]
fn a_filter_that_is_not_a_boolean_is_named() {
    let ws = shop();
    ws.write(
        "filter.yaml",
        &SPEC.replace(r#""amount > 0""#, r#""amount + 1""#),
    );
    let out = ws.run("filter.yaml");
    assert_eq!(out.code, 1);
    assert_no_panic(&out.stderr);
    let report = out.report();
    let error = medallion_tests::table(&report, "silver.orders")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("silver.orders") && error.contains("filter `amount + 1` is Decimal"),
        "{error}"
    );
    assert!(!ws.path().join("lake/silver/orders").exists());
}

/// A Parquet file whose footer reads but whose pages do not: bronze would copy its pages
/// without decoding them, so it decodes them first; the run fails naming the file and no
/// table changes.
#[test]
fn a_parquet_file_whose_pages_do_not_decode_fails_bronze_naming_it_and_lands_nothing() {
    let ws = medallion_tests::Workspace::new();
    ws.write(
        "pipeline.yaml",
        r#"
pipeline: broken
lake: lake
sources:
  - { name: items, format: parquet, path: "data/*.parquet" }
bronze:
  - { name: items, source: items }
"#,
    );
    medallion_tests::run_python(
        r#"
import os, sys, pyarrow as pa, pyarrow.parquet as pq
os.makedirs(f"{sys.argv[1]}/data")
for name in ["a", "b"]:
    t = pa.table({"id": pa.array(range(5000), pa.int64()), "name": [f"n{k}" for k in range(5000)]})
    pq.write_table(t, f"{sys.argv[1]}/data/{name}.parquet", use_dictionary=False, row_group_size=5000)
# b's first data page header, then garbage: the footer still reads.
path = f"{sys.argv[1]}/data/b.parquet"
at = pq.ParquetFile(path).metadata.row_group(0).column(1).data_page_offset
with open(path, "r+b") as f:
    f.seek(at)
    f.write(b"\xff" * 24)
"#,
        &[&ws.path()],
    );
    let out = ws.run("pipeline.yaml");
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert_no_panic(&out.stderr);
    assert!(out.stderr.contains("b.parquet"), "{}", out.stderr);
    assert!(!ws.has_table("lake/bronze/items"), "{}", out.stderr);
}
