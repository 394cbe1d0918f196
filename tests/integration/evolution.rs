//! Schema evolution in bronze, in embedded mode: a later batch of a feed carries a field the
//! table does not have, and each `schema_evolution` mode does what it says, read back by both
//! independent readers.

use medallion_tests::{Invocation, Workspace, metric, python_json, table};
use serde_json::{Value, json};

/// A device feed; `more` goes into the source's entry (e.g. `schema_evolution: rescue`).
fn spec(more: &str) -> String {
    format!(
        "pipeline: devices\nlake: lake\nsources:\n\
         \x20 - {{ name: feed, format: json, path: data/*.jsonl{more} }}\n\
         bronze:\n  - {{ name: readings, source: feed }}\n"
    )
}

/// The first batch, ingested; then a second one whose records add `humidity`.
fn two_batches(ws: &Workspace, more: &str) -> Invocation {
    ws.write("p.yaml", &spec(more));
    ws.write(
        "data/a.jsonl",
        "{\"id\": 1, \"temp\": 20.5}\n{\"id\": 2, \"temp\": 21}\n",
    );
    let first = ws.run("p.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    ws.write(
        "data/b.jsonl",
        "{\"id\": 3, \"temp\": 19, \"humidity\": 40}\n{\"id\": 4, \"temp\": 18, \"humidity\": 42}\n",
    );
    ws.run("p.yaml")
}

/// Adds `data/c.jsonl` and runs again; returns the run's text summary.
fn third_batch_summary(ws: &Workspace, lines: &str) -> String {
    ws.write("data/c.jsonl", lines);
    let text = ws.medallion(&["run", "p.yaml"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    format!("{}{}", text.stdout, text.stderr)
}

fn report(run: &Invocation) -> Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr))
}

fn by_id(rows: &Value) -> Vec<Value> {
    let mut rows = rows.as_array().unwrap().clone();
    rows.sort_by_key(|r| match &r["id"] {
        Value::String(id) => id.clone(),
        id => format!("{id:0>20}"),
    });
    rows
}

#[test]
fn a_new_field_becomes_a_column_and_earlier_rows_read_null() {
    let ws = Workspace::new();
    let second = two_batches(&ws, "");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let report = report(&second);
    let bronze = table(&report, "bronze.readings");
    assert_eq!(bronze["columns_added"], json!(["humidity"]), "{report:#}");
    assert_eq!(metric(&report, "bronze.readings", "rows_rescued"), 0);

    let read = ws.read_table("lake/bronze/readings");
    assert_eq!(read["readers_agree"], true, "{read:#}");
    assert_eq!(
        read["version"], 1,
        "one commit with the rows and the column"
    );
    let columns = read["columns"].as_array().unwrap();
    assert!(columns.contains(&json!("humidity")), "{read:#}");
    let humidity: Vec<Value> = by_id(&read["rows"])
        .iter()
        .map(|r| r["humidity"].clone())
        .collect();
    assert_eq!(
        humidity,
        [Value::Null, Value::Null, json!("40"), json!("42")]
    );
    let rescued: Vec<Value> = by_id(&read["rows"])
        .iter()
        .map(|r| r["_rescued_data"].clone())
        .collect();
    assert!(rescued.iter().all(Value::is_null), "{rescued:?}");

    // The summary says so, apart from malformed records.
    let summary = third_batch_summary(
        &ws,
        "{\"id\": 5, \"temp\": 17, \"pressure\": 1013}\nnot json\n",
    );
    assert!(
        summary.contains("new column(s) from new fields in its files: pressure"),
        "{summary}"
    );
    assert!(
        summary.contains("kept 1 malformed records in _rescued_data"),
        "{summary}"
    );
    assert!(!summary.contains("new fields of"), "{summary}");

    // Silver may now select the new column.
    ws.write(
        "p.yaml",
        &format!(
            "{}silver:\n  - {{ name: readings, from: bronze.readings, keys: [id], columns: \
             [{{ name: id, type: bigint }}, {{ name: humidity, type: bigint }}] }}\n",
            spec("")
        ),
    );
    let silver = ws.run("p.yaml");
    assert_eq!(silver.code, 0, "{}", silver.stderr);
    let rows = ws.read_table("lake/silver/readings");
    assert_eq!(rows["readers_agree"], true, "{rows:#}");
    let mut humidity: Vec<(Option<i64>, Value)> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_i64(), r["humidity"].clone()))
        .collect();
    humidity.sort_by_key(|(id, _)| *id);
    // The malformed line is a row with nothing but its rescued text: no id.
    assert_eq!(
        humidity,
        [
            (None, Value::Null),
            (Some(1), Value::Null),
            (Some(2), Value::Null),
            (Some(3), json!(40)),
            (Some(4), json!(42)),
            (Some(5), Value::Null)
        ]
    );
}

#[test]
fn in_rescue_mode_a_new_field_is_kept_as_json_and_the_columns_stay() {
    let ws = Workspace::new();
    let second = two_batches(&ws, ", schema_evolution: rescue");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let report = report(&second);
    assert!(
        table(&report, "bronze.readings")
            .get("columns_added")
            .is_none(),
        "{report:#}"
    );
    // Rescued for their new field, not as malformed records, and the summary tells them apart.
    assert_eq!(metric(&report, "bronze.readings", "rows_rescued"), 2);
    assert_eq!(metric(&report, "bronze.readings", "rows_malformed"), 0);
    let summary = third_batch_summary(
        &ws,
        "{\"id\": 5, \"humidity\": 1}\n{\"id\": 6, \"temp\": [\n",
    );
    for says in [
        "kept 1 malformed records in _rescued_data",
        "kept the new fields of 1 records in _rescued_data",
    ] {
        assert!(summary.contains(says), "{summary}");
    }
    let read = ws.read_table("lake/bronze/readings");
    assert_eq!(read["readers_agree"], true, "{read:#}");
    assert!(
        !read["columns"]
            .as_array()
            .unwrap()
            .contains(&json!("humidity"))
    );
    let third = read["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "3")
        .unwrap();
    let rescued: Value = serde_json::from_str(third["_rescued_data"].as_str().unwrap()).unwrap();
    assert_eq!(rescued["humidity"], 40, "{rescued:#}");
}

#[test]
fn fail_on_new_columns_names_the_field_and_file_and_commits_nothing() {
    let ws = Workspace::new();
    let second = two_batches(&ws, ", schema_evolution: fail_on_new_columns");
    assert_eq!(second.code, 1, "{}\n{}", second.stdout, second.stderr);
    let report = report(&second);
    let error = table(&report, "bronze.readings")["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains("'humidity' (first in") && error.contains("b.jsonl"),
        "{error}"
    );
    assert!(error.contains("fail_on_new_columns"), "{error}");
    let read = ws.read_table("lake/bronze/readings");
    assert_eq!(
        (read["version"].as_u64(), read["num_rows"].as_u64()),
        (Some(0), Some(2))
    );
}

#[test]
fn in_none_mode_a_new_field_is_dropped() {
    let ws = Workspace::new();
    let second = two_batches(&ws, ", schema_evolution: none");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let report = report(&second);
    assert_eq!(
        metric(&report, "bronze.readings", "rows_rescued"),
        0,
        "{report:#}"
    );
    let read = ws.read_table("lake/bronze/readings");
    assert_eq!(
        (read["readers_agree"].as_bool(), read["num_rows"].as_u64()),
        (Some(true), Some(4))
    );
    assert!(
        !read["columns"]
            .as_array()
            .unwrap()
            .contains(&json!("humidity"))
    );
    assert!(
        by_id(&read["rows"])
            .iter()
            .all(|r| r["_rescued_data"].is_null()),
        "{read:#}"
    );
}

/// A declared feed whose second batch widens `qty` (int -> bigint, with a value past 2^31)
/// and `price` (float -> double) and adds `color`; `mode` is the source's schema_evolution.
fn widened_batches(ws: &Workspace, mode: &str) -> Invocation {
    let spec = |qty: &str, price: &str| {
        format!(
            "pipeline: devices\nlake: lake\nsources:\n\
             \x20 - name: feed\n    format: json\n    path: data/*.jsonl\n\
             \x20   schema_evolution: {mode}\n\
             \x20   schema: [{{ name: id, type: int }}, {{ name: qty, type: {qty} }}, \
             {{ name: price, type: {price} }}]\n\
             bronze:\n  - {{ name: readings, source: feed }}\n"
        )
    };
    ws.write("p.yaml", &spec("int", "float"));
    ws.write(
        "data/a.jsonl",
        "{\"id\": 1, \"qty\": 5, \"price\": 1.5}\n{\"id\": 2, \"qty\": 7, \"price\": 2.25}\n",
    );
    let first = ws.run("p.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    ws.write("p.yaml", &spec("bigint", "double"));
    ws.write(
        "data/b.jsonl",
        "{\"id\": 3, \"qty\": 5000000000, \"price\": 3.1, \"color\": \"red\"}\n",
    );
    ws.run("p.yaml")
}

/// Types and values of the widened columns, as DuckDB's Delta reader sees them.
fn widened_values(ws: &Workspace) -> Value {
    let table = ws.path().join("lake/bronze/readings");
    python_json(&[
        "sql",
        table.to_str().unwrap(),
        "SELECT id, typeof(qty) AS qty_type, qty, typeof(price) AS price_type, price FROM t ORDER BY id",
    ])
}

/// Safe type widening in bronze, in each mode: a declared type widened (int -> bigint, float
/// -> double) rewrites the table's earlier rows with the wider types in the commit of the new
/// rows; the new field then follows the mode.
#[test]
fn declared_types_widen_in_one_commit_in_every_mode() {
    let widened = json!(["qty: Int32 -> Int64", "price: Float32 -> Float64"]);
    let values = json!([
        {"id": 1, "qty_type": "BIGINT", "qty": 5, "price_type": "DOUBLE", "price": "1.5"},
        {"id": 2, "qty_type": "BIGINT", "qty": 7, "price_type": "DOUBLE", "price": "2.25"},
        {"id": 3, "qty_type": "BIGINT", "qty": 5_000_000_000_i64, "price_type": "DOUBLE", "price": "3.1"},
    ]);
    for (mode, color) in [
        ("add_new_columns", Some(json!([null, null, "red"]))),
        ("rescue", None),
        ("none", None),
    ] {
        let ws = Workspace::new();
        let second = widened_batches(&ws, mode);
        assert_eq!(second.code, 0, "{mode}: {}", second.stderr);
        let report = report(&second);
        let bronze = table(&report, "bronze.readings");
        assert_eq!(bronze["columns_widened"], widened, "{mode}: {report:#}");
        let read = ws.read_table("lake/bronze/readings");
        assert_eq!(read["readers_agree"], true, "{mode}: {read:#}");
        assert_eq!(read["version"], 1, "{mode}: one commit");
        assert_eq!(widened_values(&ws), values, "{mode}");
        let colors: Vec<Value> = by_id(&read["rows"])
            .iter()
            .map(|r| r["color"].clone())
            .collect();
        match color {
            Some(expected) => assert_eq!(json!(colors), expected, "{mode}"),
            None => assert!(colors.iter().all(Value::is_null), "{mode}: {read:#}"),
        }
        let rescued = metric(&report, "bronze.readings", "rows_rescued");
        assert_eq!(rescued, u64::from(mode == "rescue"), "{mode}: {report:#}");
    }

    // fail_on_new_columns: `color` fails the table, and nothing is written, widening included.
    let ws = Workspace::new();
    let second = widened_batches(&ws, "fail_on_new_columns");
    assert_eq!(second.code, 1, "{}", second.stderr);
    let error = table(&report(&second), "bronze.readings")["error"].to_string();
    assert!(error.contains("'color' (first in"), "{error}");
    assert_eq!(ws.read_table("lake/bronze/readings")["version"], 0);
    assert_eq!(widened_values(&ws)[0]["qty_type"], "INTEGER");
}
