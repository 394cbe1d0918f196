use std::io::Write;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Schema};
use medallion_pipeline::spec::SourceFormat;

use super::*;

fn file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

fn opts(format: SourceFormat) -> ReadOptions {
    ReadOptions {
        format,
        header: true,
        delimiter: b',',
    }
}

fn read_all(path: &Path, options: &ReadOptions, schema: &Schema) -> (Vec<RecordBatch>, usize) {
    let mut rescued = 0;
    let batches = read_file(path, options, schema)
        .unwrap()
        .map(|c| {
            let c = c.unwrap();
            rescued += c.rescued;
            c.batch
        })
        .collect();
    (batches, rescued)
}

fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a = arrow::compute::cast(batch.column_by_name(col).unwrap(), &DataType::Utf8).unwrap();
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

#[test]
fn json_malformed_lines_and_unknown_fields_are_rescued() {
    let f = file(
        "{\"id\": 1, \"amount\": 9.5, \"extra\": true}\n\
         {not json\n\
         \n\
         {\"id\": \"x\", \"amount\": null}\n",
    );
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("amount", DataType::Utf8, true),
    ]);
    let (batches, rescued) = read_all(f.path(), &opts(SourceFormat::Json), &schema);
    assert_eq!(rescued, 3);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 3);
    assert_eq!(strings(b, "id"), [Some("1".into()), None, None]);
    assert_eq!(strings(b, "amount"), [Some("9.5".into()), None, None]);
    let r = strings(b, "_rescued_data");
    assert_eq!(r[0].as_deref(), Some(r#"{"_line":1,"extra":true}"#));
    assert_eq!(
        r[1].as_deref(),
        Some(r#"{"_corrupt_record":"{not json","_line":2}"#)
    );
    assert_eq!(r[2].as_deref(), Some(r#"{"_line":4,"id":"x"}"#));
}

#[test]
fn csv_header_wrong_field_counts_and_types() {
    let f = file("id;name;age\n1;Ann;30\n2;Bob\n3;;old\n");
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int32, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("age", DataType::Int32, true),
    ]);
    let options = ReadOptions {
        delimiter: b';',
        ..opts(SourceFormat::Csv)
    };
    let (batches, rescued) = read_all(f.path(), &options, &schema);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 3);
    assert_eq!(rescued, 2);
    assert_eq!(strings(b, "name"), [Some("Ann".into()), None, None]);
    assert_eq!(strings(b, "age"), [Some("30".into()), None, None]);
    let r = strings(b, "_rescued_data");
    assert_eq!(r[0], None);
    assert_eq!(
        r[1].as_deref(),
        Some(r#"{"_corrupt_record":"2;Bob","_line":3}"#)
    );
    assert_eq!(r[2].as_deref(), Some(r#"{"_line":4,"age":"old"}"#));
}

#[test]
fn inference_takes_keys_in_order_as_text() {
    let a = file("{\"b\": 1, \"a\": 2}\n{\"c\": [1]}\n");
    let schema = infer_schema(&[a.path()], &opts(SourceFormat::Json), 100).unwrap();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["b", "a", "c"]);
    assert!(
        schema
            .fields()
            .iter()
            .all(|f| f.data_type() == &DataType::Utf8)
    );
}

#[test]
fn missing_file_names_the_file() {
    let err = read_file(
        Path::new("/nope/x.jsonl"),
        &opts(SourceFormat::Json),
        &Schema::empty(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().starts_with("/nope/x.jsonl: "), "{err}");
}

#[test]
fn parquet_extra_columns_and_bad_casts_are_rescued() {
    use arrow::array::{Int64Array, StringArray};
    let input = RecordBatch::try_from_iter(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2])) as _),
        (
            "when",
            Arc::new(StringArray::from(vec!["2024-01-02", "soon"])) as _,
        ),
        (
            "more",
            Arc::new(StringArray::from(vec![Some("x"), None])) as _,
        ),
    ])
    .unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    let mut w =
        ::parquet::arrow::ArrowWriter::try_new(f.reopen().unwrap(), input.schema(), None).unwrap();
    w.write(&input).unwrap();
    w.close().unwrap();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("when", DataType::Date32, true),
    ]);
    let (batches, rescued) = read_all(f.path(), &opts(SourceFormat::Parquet), &schema);
    assert_eq!(rescued, 2);
    let r = strings(&batches[0], "_rescued_data");
    assert_eq!(r[0].as_deref(), Some(r#"{"_line":1,"more":"x"}"#));
    assert_eq!(r[1].as_deref(), Some(r#"{"_line":2,"when":"soon"}"#));
    assert!(batches[0].column_by_name("when").unwrap().is_null(1));
}

#[test]
fn json_values_become_raw_text() {
    let f = file(
        "{\"i\\u0064\": 7, \"n\": {\"x\": [1, 2.5]}, \"b\": true, \"s\": \"a\\\"q\", \"f\": 2.50}\n[1]\n{\"id\": 1} x\n",
    );
    let schema = Schema::new(
        ["id", "n", "b", "s", "f"]
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let (batches, rescued) = read_all(f.path(), &opts(SourceFormat::Json), &schema);
    let b = &batches[0];
    assert_eq!(
        strings(b, "id")[0].as_deref(),
        Some("7"),
        "escaped key names its column"
    );
    assert_eq!(strings(b, "n")[0].as_deref(), Some(r#"{"x":[1,2.5]}"#));
    assert_eq!(strings(b, "b")[0].as_deref(), Some("true"));
    assert_eq!(strings(b, "s")[0].as_deref(), Some("a\"q"));
    assert_eq!(strings(b, "f")[0].as_deref(), Some("2.5"));
    // Not an object, and trailing garbage: both kept whole as corrupt records.
    assert_eq!(rescued, 2);
    let r = strings(b, "_rescued_data");
    assert_eq!(
        r[1].as_deref(),
        Some(r#"{"_corrupt_record":"[1]","_line":2}"#)
    );
    assert_eq!(
        r[2].as_deref(),
        Some(r#"{"_corrupt_record":"{\"id\": 1} x","_line":3}"#)
    );
}
