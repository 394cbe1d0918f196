//! The e-commerce example end to end: every table read back by both independent readers, and
//! the gold tables (aggregated before their joins) equal to DuckDB's computation straight from
//! the raw files.

use medallion_tests::{Workspace, assert_rows_close, metric, python_json, table};

#[test]
fn example_pipeline_tables_agree_with_independent_readers_and_reference() {
    let (ws, _) = Workspace::example(5000, 4);

    // At debug level the executors log each query's executed plan.
    let log = "medallion_executor=debug";
    let run = ws.medallion(&["run", "pipeline.yaml", "--output", "json", "--log", log]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Silver customers and products are unique on their keys, so each gold query groups the
    // orders by the key alone and joins the groups to them (executor/src/eager.rs).
    for grouped in [
        "gby=[customer_id@0 as customer_id]",
        "gby=[product_id@0 as product_id]",
    ] {
        assert!(run.stderr.contains(grouped), "no {grouped}: {}", run.stderr);
    }
    let report = run.report();
    assert!(
        metric(&report, "bronze.orders", "rows_rescued") > 0,
        "the generator writes malformed lines"
    );
    assert!(metric(&report, "silver.orders", "rows_filtered") > 0);
    assert!(metric(&report, "silver.orders", "rows_deduplicated") > 0);

    for name in [
        "bronze.orders",
        "bronze.customers",
        "bronze.products",
        "silver.orders",
        "silver.customers",
        "silver.products",
        "gold.customer_360",
        "gold.product_performance",
    ] {
        let t = ws.read_table(&format!("lake/{}", name.replace('.', "/")));
        assert_eq!(
            t["readers_agree"], true,
            "{name}: deltalake and DuckDB disagree"
        );
        assert_eq!(t["num_rows"], t["duckdb_num_rows"], "{name}");
        assert_eq!(
            t["num_rows"].as_u64().unwrap(),
            metric(&report, name, "rows_written"),
            "{name}: rows vs report"
        );
        let version = &table(&report, name)["version"];
        assert_eq!(&t["version"], version, "{name}: version vs report");
    }
    let bronze = ws.read_table("lake/bronze/orders");
    let rescued = bronze["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["_rescued_data"].is_null())
        .count() as u64;
    assert_eq!(rescued, metric(&report, "bronze.orders", "rows_rescued"));

    let reference = python_json(&["gold-reference", ws.path().join("data").to_str().unwrap()]);
    for (gold, key) in [
        ("customer_360", "customer_id"),
        ("product_performance", "product_id"),
    ] {
        let ours = ws.read_table(&format!("lake/gold/{gold}"));
        assert!(!reference[gold].as_array().unwrap().is_empty());
        assert_rows_close(
            &ours["rows"],
            &reference[gold],
            key,
            &format!("gold.{gold}"),
        );
    }
    assert_eq!(
        ws.read_table("lake/silver/orders")["num_rows"],
        reference["silver_orders_rows"]
    );
}

#[test]
fn generator_is_deterministic() {
    let ws = Workspace::new();
    for dir in ["a", "b"] {
        let out = ws.medallion(&[
            "generate", dir, "--orders", "3000", "--files", "3", "--seed", "7",
        ]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let other = ws.medallion(&[
        "generate", "c", "--orders", "3000", "--files", "3", "--seed", "8",
    ]);
    assert_eq!(other.code, 0);
    let read = |dir: &str, file: &str| std::fs::read(ws.path().join(dir).join(file)).unwrap();
    for file in [
        "orders/orders_0001.jsonl",
        "orders/orders_0003.jsonl",
        "customers/customers.csv",
        "products/products.parquet",
    ] {
        assert_eq!(
            read("a", file),
            read("b", file),
            "{file} differs between two runs with one seed"
        );
    }
    assert_ne!(
        read("a", "orders/orders_0001.jsonl"),
        read("c", "orders/orders_0001.jsonl")
    );
}
