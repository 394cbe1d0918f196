//! Each layer on the shop fixture: what lands in every table, read back independently.

use medallion_tests::{metric, table};
use serde_json::{Value, json};

use crate::fixture::{ORDERS_3, shop};

fn rows(t: &Value) -> &Vec<Value> {
    t["rows"].as_array().expect("rows")
}

/// Projects rows onto some columns, ordered by the first, for exact comparisons.
fn project(t: &Value, cols: &[&str]) -> Vec<Value> {
    let mut out: Vec<Value> = rows(t)
        .iter()
        .map(|r| {
            Value::Object(
                cols.iter()
                    .map(|c| (c.to_string(), r[*c].clone()))
                    .collect(),
            )
        })
        .collect();
    out.sort_by_key(|v| v[cols[0]].as_i64());
    out
}

#[test]
fn bronze_keeps_raw_rows_with_metadata_partitions_and_rescued_records() {
    let ws = shop();
    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.report();
    assert_eq!(metric(&report, "bronze.orders", "rows_written"), 8);
    assert_eq!(metric(&report, "bronze.orders", "rows_rescued"), 1);
    assert_eq!(metric(&report, "bronze.orders", "files_read"), 2);
    assert_eq!(table(&report, "bronze.orders")["tasks"], 2);

    let bronze = ws.read_table("lake/bronze/orders");
    assert_eq!(bronze["readers_agree"], true, "{bronze:#}");
    assert_eq!(bronze["num_rows"], 8);
    assert_eq!(bronze["partition_columns"], json!(["_ingestion_date"]));
    for c in [
        "_rescued_data",
        "_ingested_at",
        "_source_file",
        "_source_file_size",
        "_source_file_version",
        "_source_name",
        "_ingestion_date",
    ] {
        assert!(
            bronze["columns"].as_array().unwrap().contains(&json!(c)),
            "{c} missing"
        );
    }
    // Raw values are kept as text; the declared types come in silver.
    let first = rows(&bronze)
        .iter()
        .find(|r| r["order_id"] == "1" && r["status"] == "paid")
        .unwrap();
    assert_eq!(first["amount"], "20.00");
    assert_eq!(first["email"], "  ANN@X.COM ");
    assert_eq!(first["_source_name"], "api");
    // Relative to the source's root (`data/orders`), so the lake can move with its data.
    assert_eq!(first["_source_file"], "orders_1.jsonl");
    // What the file was when ingested: its size and modification time.
    let file = std::fs::metadata(ws.path().join("data/orders/orders_1.jsonl")).unwrap();
    assert_eq!(first["_source_file_size"], json!(file.len()));
    let modified: chrono::DateTime<chrono::Utc> = file.modified().unwrap().into();
    assert_eq!(
        first["_source_file_version"],
        modified.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
    assert_eq!(first["_ingestion_date"].as_str().unwrap().len(), 10);
    let rescued: Vec<&Value> = rows(&bronze)
        .iter()
        .filter(|r| !r["_rescued_data"].is_null())
        .collect();
    assert_eq!(rescued.len(), 1);
    let r: Value = serde_json::from_str(rescued[0]["_rescued_data"].as_str().unwrap()).unwrap();
    assert_eq!(r["_line"], 6);
    assert!(
        r["_corrupt_record"]
            .as_str()
            .unwrap()
            .starts_with("{\"order_id\": 5")
    );
    // Every bronze row of one run carries the same ingestion time.
    let times: std::collections::BTreeSet<_> = rows(&bronze)
        .iter()
        .map(|r| r["_ingested_at"].to_string())
        .collect();
    assert_eq!(times.len(), 1);
}

#[test]
fn bronze_is_incremental_exactly_once() {
    let ws = shop();
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    let v1 = ws.read_table("lake/bronze/orders")["version"].clone();

    let again = ws.run("pipeline.yaml");
    assert_eq!(again.code, 0, "{}", again.stderr);
    let report = again.report();
    assert_eq!(table(&report, "bronze.orders")["status"], "up_to_date");
    assert_eq!(ws.read_table("lake/bronze/orders")["version"], v1);
    // Nothing new anywhere: silver and gold are not computed again either.
    for t in report["tables"].as_array().unwrap() {
        assert_eq!(t["status"], "up_to_date", "{t:#}");
    }
    let gold_version = ws.read_table("lake/gold/customer_360")["version"].clone();

    // A file with no records yet (empty, or being written) makes no version.
    ws.write("data/orders/orders_empty.jsonl", "\n");
    let empty = ws.run("pipeline.yaml").report();
    assert_eq!(
        table(&empty, "bronze.orders")["status"],
        "up_to_date",
        "{empty:#}"
    );
    assert_eq!(ws.read_table("lake/bronze/orders")["version"], v1);
    std::fs::remove_file(ws.path().join("data/orders/orders_empty.jsonl")).unwrap();

    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let third = ws.run("pipeline.yaml").report();
    assert_eq!(metric(&third, "bronze.orders", "files_read"), 1);
    assert_eq!(metric(&third, "bronze.orders", "rows_written"), 2);
    let bronze = ws.read_table("lake/bronze/orders");
    assert_eq!(bronze["num_rows"], 10);
    let from_third = rows(&bronze)
        .iter()
        .filter(|r| {
            r["_source_file"]
                .as_str()
                .unwrap()
                .ends_with("orders_3.jsonl")
        })
        .count();
    assert_eq!(from_third, 2);
    assert_eq!(
        ws.run("pipeline.yaml").report()["tables"][0]["status"],
        "up_to_date"
    );
    // New orders changed the gold table: a new version.
    assert_ne!(
        ws.read_table("lake/gold/customer_360")["version"],
        gold_version
    );
}

#[test]
fn silver_types_cleans_filters_and_deduplicates() {
    let ws = shop();
    let report = ws.run("pipeline.yaml").report();
    assert_eq!(report["succeeded"], true, "{report:#}");
    // 8 bronze rows: 3 fail the filters (null id, malformed, zero amount), 2 are older duplicates.
    assert_eq!(metric(&report, "silver.orders", "rows_read"), 8);
    assert_eq!(metric(&report, "silver.orders", "rows_filtered"), 3);
    assert_eq!(metric(&report, "silver.orders", "rows_deduplicated"), 2);
    assert_eq!(metric(&report, "silver.orders", "rows_written"), 3);
    assert_eq!(table(&report, "silver.orders")["tasks"], 2);

    let silver = ws.read_table("lake/silver/orders");
    assert_eq!(silver["readers_agree"], true, "{silver:#}");
    assert_eq!(
        project(
            &silver,
            &[
                "order_id",
                "status",
                "email",
                "amount",
                "quantity",
                "order_date"
            ]
        ),
        vec![
            json!({"order_id": 1, "status": "paid", "email": "ann@x.com", "amount": 20.0, "quantity": 2, "order_date": "2024-01-01"}),
            json!({"order_id": 2, "status": "unknown", "email": "ann@x.com", "amount": 5.5, "quantity": 1, "order_date": "2024-01-03"}),
            json!({"order_id": 4, "status": "shipped", "email": "bob@y.com", "amount": 30.0, "quantity": 3, "order_date": "2024-01-05"}),
        ]
    );
    assert_eq!(
        silver["columns"],
        json!([
            "order_id",
            "customer_id",
            "product_id",
            "quantity",
            "amount",
            "status",
            "email",
            "order_date"
        ])
    );
}

#[test]
fn silver_merge_updates_and_inserts_by_key() {
    let ws = shop();
    assert_eq!(ws.run("pipeline.yaml").code, 0);
    ws.write("data/orders/orders_3.jsonl", crate::fixture::ORDERS_3);
    let report = ws.run("pipeline.yaml").report();
    assert_eq!(report["succeeded"], true, "{report:#}");
    assert_eq!(metric(&report, "silver.orders", "rows_inserted"), 1);
    assert_eq!(metric(&report, "silver.orders", "rows_updated"), 1);
    assert_eq!(metric(&report, "silver.orders", "rows_written"), 2);

    let silver = ws.read_table("lake/silver/orders");
    assert_eq!(silver["readers_agree"], true);
    assert_eq!(
        project(&silver, &["order_id", "status", "amount"]),
        vec![
            json!({"order_id": 1, "status": "paid", "amount": 20.0}),
            json!({"order_id": 2, "status": "delivered", "amount": 6.5}),
            json!({"order_id": 4, "status": "shipped", "amount": 30.0}),
            json!({"order_id": 6, "status": "paid", "amount": 11.0}),
        ]
    );
    assert_eq!(silver["history"][0], "MERGE");
}

#[test]
fn gold_matches_hand_computed_values() {
    let ws = shop();
    let report = ws.run("pipeline.yaml").report();
    assert_eq!(report["succeeded"], true, "{report:#}");
    let c360 = ws.read_table("lake/gold/customer_360");
    assert_eq!(c360["readers_agree"], true);
    assert_eq!(
        project(
            &c360,
            &[
                "customer_id",
                "customer_name",
                "total_orders",
                "lifetime_value",
                "avg_order_value",
                "first_order_date",
                "last_order_date",
                "customer_tenure_days"
            ]
        ),
        vec![
            json!({"customer_id": 10, "customer_name": "Ann", "total_orders": 2, "lifetime_value": 25.5, "avg_order_value": 12.75,
                   "first_order_date": "2024-01-01", "last_order_date": "2024-01-03", "customer_tenure_days": 2}),
            json!({"customer_id": 11, "customer_name": "Bob", "total_orders": 1, "lifetime_value": 30.0, "avg_order_value": 30.0,
                   "first_order_date": "2024-01-05", "last_order_date": "2024-01-05", "customer_tenure_days": 0}),
        ]
    );
    let products = ws.read_table("lake/gold/product_performance");
    assert_eq!(
        project(
            &products,
            &[
                "product_id",
                "product_name",
                "units_sold",
                "revenue",
                "unique_customers"
            ]
        ),
        vec![
            json!({"product_id": 100, "product_name": "Lamp", "units_sold": 5, "revenue": 50.0, "unique_customers": 2}),
            json!({"product_id": 101, "product_name": "Book", "units_sold": 1, "revenue": 5.5, "unique_customers": 1}),
        ]
    );
    assert_eq!(metric(&report, "gold.customer_360", "rows_written"), 2);
}

#[test]
fn silver_without_keys_keeps_every_row_once() {
    let ws = shop();
    let spec = crate::fixture::SPEC.replace(
        "gold:\n",
        "  - name: order_lines\n    from: bronze.orders\n    partitions: 3\n    columns:\n      - { name: order_id, type: bigint }\n      - { name: source, expr: _source_file }\ngold:\n",
    );
    ws.write("pipeline.yaml", &spec);
    let report = ws.run("pipeline.yaml").report();
    assert_eq!(report["succeeded"], true, "{report:#}");
    assert_eq!(table(&report, "silver.order_lines")["tasks"], 1);
    let lines = ws.read_table("lake/silver/order_lines");
    assert_eq!(lines["num_rows"], 8);
    assert_eq!(
        metric(&report, "silver.order_lines", "rows_deduplicated"),
        0
    );
}

/// Parquet files in bronze.items, the latest row per `id` in silver.items.
const ITEMS: &str = r#"
pipeline: items
lake: lake
sources:
  - { name: items, format: parquet, path: "data/*.parquet" }
bronze:
  - { name: items, source: items }
silver:
  - name: items
    from: bronze.items
    keys: [id]
"#;

/// A workspace whose pipeline is [`ITEMS`] with silver.items keeping `columns` (`options`:
/// more of silver.items' lines).
fn items_from_parquet(options: &str, columns: &[&str]) -> medallion_tests::Workspace {
    let ws = medallion_tests::Workspace::new();
    let columns: String = columns
        .iter()
        .map(|c| format!("      - {{ name: {c} }}\n"))
        .collect();
    ws.write(
        "pipeline.yaml",
        &format!("{ITEMS}{options}    columns:\n{columns}"),
    );
    ws
}

/// Parquet files with the table's columns land in bronze as their encoded pages (no decode
/// and encode again): both readers read back every source row with its metadata, the data
/// files keep the sources' row groups and page indexes, and silver reads them as any other.
#[test]
fn parquet_files_land_in_bronze_as_their_pages_and_read_back_as_their_rows() {
    let ws = items_from_parquet("", &["id", "name", "price", "day"]);
    // Two files of two row groups each; ids 1000-1499 are in both, the second file's win.
    let written = medallion_tests::run_python(
        r#"
import os, sys, datetime, decimal, pyarrow as pa, pyarrow.parquet as pq
os.makedirs(f"{sys.argv[1]}/data")
for i, first in enumerate([0, 1000]):
    n = 1500
    t = pa.table({
        "id": pa.array(range(first, first + n), pa.int64()),
        "name": [None if k % 9 == 0 else f"item {k} of file {i}" for k in range(n)],
        "price": pa.array([decimal.Decimal(k) / 4 for k in range(n)], pa.decimal128(10, 2)),
        "day": [datetime.date(2024, 1, 1) + datetime.timedelta(days=k % 300) for k in range(n)],
    })
    pq.write_table(t, f"{sys.argv[1]}/data/part-{i}.parquet", row_group_size=1000,
                   write_page_index=(i == 0))
print("ok")
"#,
        &[&ws.path()],
    );
    assert_eq!(written.trim(), "ok");
    let out = ws.run("pipeline.yaml");
    assert_eq!(out.code, 0, "{}", out.stderr);
    let report = out.report();
    assert_eq!(metric(&report, "bronze.items", "rows_written"), 3000);

    let bronze = ws.read_table("lake/bronze/items");
    assert_eq!(bronze["num_rows"], 3000);
    assert_eq!(bronze["readers_agree"], true);
    let check = medallion_tests::run_python(
        r#"
import sys, json, glob, pyarrow.parquet as pq
from deltalake import DeltaTable
bronze = DeltaTable(sys.argv[1] + "/lake/bronze/items").to_pyarrow_table()
source = {f.split("/")[-1]: pq.read_table(f) for f in glob.glob(sys.argv[1] + "/data/*.parquet")}
rows = 0
for name, table in source.items():
    mine = bronze.filter([f.endswith(name) for f in bronze["_source_file"].to_pylist()])
    rows += mine.num_rows
    assert mine.select(table.column_names).sort_by("id").equals(table.sort_by("id")), name
    assert mine["_rescued_data"].null_count == mine.num_rows
    assert set(mine["_source_name"].to_pylist()) == {"items"}
files = DeltaTable(sys.argv[1] + "/lake/bronze/items").file_uris()
groups = sorted(pq.ParquetFile(f).metadata.num_row_groups for f in files)
print(json.dumps({"rows": rows, "row_groups": groups}))
"#,
        &[&ws.path()],
    );
    let check: Value = serde_json::from_str(&check).unwrap();
    assert_eq!(check, json!({"rows": 3000, "row_groups": [2, 2]}));

    let silver = ws.read_table("lake/silver/items");
    assert_eq!(silver["num_rows"], 2500);
    assert_eq!(silver["readers_agree"], true);
    let item = |id: u64| {
        rows(&silver)
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        item(1200)["name"],
        "item 200 of file 1",
        "the later file wins"
    );
    assert_eq!(item(998)["name"], "item 998 of file 0");
    assert_eq!(item(1000)["name"], Value::Null);
    assert_eq!(item(1001)["price"], 0.25);
}

/// Input files that hold separate ranges of the first key split silver's tasks by ranges of
/// it (each reads only its files): every key lands once, the cut value included, and a key
/// sent again in a later file on the same side of the cut is deduplicated as anywhere.
#[test]
fn silver_tasks_split_by_key_ranges_of_the_input_files_keep_every_key_once() {
    let ws = items_from_parquet("    partitions: 2\n", &["id", "name"]);
    // Eight files of 1000 ids each; the second and the seventh send again an id of the file
    // before them.
    medallion_tests::run_python(
        r#"
import os, sys, pyarrow as pa, pyarrow.parquet as pq
os.makedirs(f"{sys.argv[1]}/data")
for i in range(8):
    ids = list(range(i * 1000, i * 1000 + 1000))
    names = [f"item {k}" for k in ids]
    if i in (1, 6):
        ids.append(i * 1000 - 500)
        names.append("sent again")
    t = pa.table({"id": pa.array(ids, pa.int64()), "name": names})
    pq.write_table(t, f"{sys.argv[1]}/data/part-{i}.parquet")
"#,
        &[&ws.path()],
    );
    let out = ws.medallion(&["run", "pipeline.yaml", "--executors", "2", "--log", "info"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("split by key ranges") && out.stderr.contains("4000"),
        "the tasks were split at id 4000: {}",
        out.stderr
    );
    let silver = ws.read_table("lake/silver/items");
    assert_eq!(silver["readers_agree"], true);
    assert_eq!(silver["num_rows"], 8000);
    let ids: std::collections::BTreeSet<u64> = rows(&silver)
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..8000).collect());
    let name = |id: u64| {
        rows(&silver)
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["name"].clone())
            .unwrap()
    };
    assert_eq!(name(500), "sent again");
    assert_eq!(name(5500), "sent again");
    assert_eq!(name(4000), "item 4000");
    assert_eq!(name(3999), "item 3999");
}
