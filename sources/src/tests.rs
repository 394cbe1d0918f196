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
        ignore_new_fields: false,
    }
}

fn read_all(path: &Path, options: &ReadOptions, schema: &Schema) -> (Vec<RecordBatch>, usize) {
    let mut rescued = 0;
    let batches = read_file(path, None, options, schema)
        .unwrap()
        .map(|c| {
            let c = c.unwrap();
            rescued += c.rescued;
            c.batch
        })
        .collect();
    (batches, rescued)
}

/// How many rows of a file were rescued as malformed (not for fields without a column).
fn malformed(path: &Path, options: &ReadOptions, schema: &Schema) -> usize {
    let chunks = read_file(path, None, options, schema).unwrap();
    chunks.map(|c| c.unwrap().malformed).sum()
}

fn strings(batch: &RecordBatch, col: &str) -> Vec<Option<String>> {
    let a = arrow::compute::cast(batch.column_by_name(col).unwrap(), &DataType::Utf8).unwrap();
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

/// `schema_evolution: none`: fields without a column are dropped; malformed records and
/// values that do not fit are still rescued.
#[test]
fn ignored_new_fields_are_dropped_not_rescued() {
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, true)]);
    let ignoring = |format| ReadOptions {
        ignore_new_fields: true,
        ..opts(format)
    };
    let json = file("{\"id\": 1, \"extra\": true}\n{\"id\": \"x\"}\n{oops\n");
    let (batches, rescued) = read_all(json.path(), &ignoring(SourceFormat::Json), &schema);
    assert_eq!(rescued, 2, "the bad id and the malformed line");
    let r = strings(&batches[0], "_rescued_data");
    assert_eq!(r[0], None, "extra is dropped");
    let csv = file("id,extra\n1,a\n2,b\n");
    let (batches, rescued) = read_all(csv.path(), &ignoring(SourceFormat::Csv), &schema);
    assert_eq!(rescued, 0);
    assert_eq!(
        strings(&batches[0], "id"),
        [Some("1".into()), Some("2".into())]
    );
    assert_eq!(strings(&batches[0], "_rescued_data"), [None, None]);
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
    // The unparsable line and the id that is not a number; not the unknown field.
    assert_eq!(malformed(f.path(), &opts(SourceFormat::Json), &schema), 2);
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
    assert_eq!(malformed(f.path(), &options, &schema), 2);
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
        None,
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
    // Only the value that is not a date; the extra column is a new field.
    assert_eq!(
        malformed(f.path(), &opts(SourceFormat::Parquet), &schema),
        1
    );
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
    // Nested values and numbers as written: no float ever rounds them.
    assert_eq!(strings(b, "n")[0].as_deref(), Some(r#"{"x": [1, 2.5]}"#));
    assert_eq!(strings(b, "b")[0].as_deref(), Some("true"));
    assert_eq!(strings(b, "s")[0].as_deref(), Some("a\"q"));
    assert_eq!(strings(b, "f")[0].as_deref(), Some("2.50"));
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

fn bytes_file(content: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(content).unwrap();
    f
}

fn text_schema(names: &[&str]) -> Schema {
    Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )
}

#[test]
fn json_numbers_keep_their_digits_in_columns_and_rescued_data() {
    let f = file(
        "{\"amount\": 12345678901234567.89, \"big\": 99999999999999999999, \"x\": 0.10000000000000000001}\n",
    );
    let (batches, rescued) = read_all(
        f.path(),
        &opts(SourceFormat::Json),
        &text_schema(&["amount", "big"]),
    );
    let b = &batches[0];
    assert_eq!(
        strings(b, "amount")[0].as_deref(),
        Some("12345678901234567.89")
    );
    assert_eq!(
        strings(b, "big")[0].as_deref(),
        Some("99999999999999999999")
    );
    assert_eq!(rescued, 1);
    assert_eq!(
        strings(b, "_rescued_data")[0].as_deref(),
        Some(r#"{"_line":1,"x":0.10000000000000000001}"#)
    );
}

#[test]
fn csv_repeated_header_names_are_rescued_not_overwritten() {
    let f = file("id,v,v\n1,a,b\n");
    let (batches, rescued) = read_all(
        f.path(),
        &opts(SourceFormat::Csv),
        &text_schema(&["id", "v"]),
    );
    let b = &batches[0];
    assert_eq!(strings(b, "v")[0].as_deref(), Some("a"));
    assert_eq!(rescued, 1);
    assert_eq!(
        strings(b, "_rescued_data")[0].as_deref(),
        Some(r#"{"_c2":"b","_line":2}"#)
    );
}

#[test]
fn csv_quote_left_open_at_the_end_is_a_corrupt_record() {
    let f = file("id,v\n1,\"abc\n2,def\n3,ghi\n");
    let (batches, rescued) = read_all(
        f.path(),
        &opts(SourceFormat::Csv),
        &text_schema(&["id", "v"]),
    );
    let b = &batches[0];
    assert_eq!(b.num_rows(), 1);
    assert_eq!(rescued, 1);
    assert_eq!(strings(b, "id")[0], None);
    assert_eq!(
        strings(b, "_rescued_data")[0].as_deref(),
        Some(r#"{"_corrupt_record":"1,abc\n2,def\n3,ghi\n","_line":2}"#)
    );
    // A quoted field with a line break that is closed is data, not corruption.
    let ok = file("id,v\n1,\"abc\ndef\"\n");
    let (batches, rescued) = read_all(
        ok.path(),
        &opts(SourceFormat::Csv),
        &text_schema(&["id", "v"]),
    );
    assert_eq!(rescued, 0);
    assert_eq!(strings(&batches[0], "v")[0].as_deref(), Some("abc\ndef"));
}

#[test]
fn byte_order_marks_are_honoured_and_utf16_without_one_is_refused() {
    let utf8_bom = bytes_file(b"\xEF\xBB\xBFid,v\n1,a\n");
    let (batches, _) = read_all(
        utf8_bom.path(),
        &opts(SourceFormat::Csv),
        &text_schema(&["id", "v"]),
    );
    assert_eq!(strings(&batches[0], "id")[0].as_deref(), Some("1"));

    let text = "id,v\n1,\u{e9}t\u{e9}\n";
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let f = bytes_file(&utf16);
    let inferred = infer_schema(&[f.path()], &opts(SourceFormat::Csv), 10).unwrap();
    assert_eq!(inferred, text_schema(&["id", "v"]));
    let (batches, rescued) = read_all(
        f.path(),
        &opts(SourceFormat::Csv),
        &text_schema(&["id", "v"]),
    );
    assert_eq!(rescued, 0);
    assert_eq!(
        strings(&batches[0], "v")[0].as_deref(),
        Some("\u{e9}t\u{e9}")
    );

    let no_bom = bytes_file(&utf16[2..]);
    let err = infer_schema(&[no_bom.path()], &opts(SourceFormat::Csv), 10).unwrap_err();
    assert!(err.to_string().contains("NUL bytes"), "{err}");
    let err = read_file(
        no_bom.path(),
        None,
        &opts(SourceFormat::Json),
        &text_schema(&["id"]),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("save it as UTF-8"), "{err}");
}

/// A file checked at planning and replaced by a link before it is read (issue 18): the
/// reader refuses it, naming both paths, instead of following the link.
#[test]
fn a_file_replaced_by_a_link_after_planning_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let file = data.join("orders.jsonl");
    std::fs::write(&file, "{\"id\": 1}\n").unwrap();
    let real = std::fs::canonicalize(&file).unwrap();
    let schema = text_schema(&["id"]);
    let read = read_file(&file, Some(&real), &opts(SourceFormat::Json), &schema);
    assert_eq!(read.unwrap().count(), 1);

    let secret = dir.path().join("secret.jsonl");
    std::fs::write(&secret, "{\"id\": 2}\n").unwrap();
    std::fs::remove_file(&file).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();
    let err = read_file(&file, Some(&real), &opts(SourceFormat::Json), &schema)
        .err()
        .expect("refused");
    let message = err.to_string();
    assert!(
        message.contains("secret.jsonl") && message.contains("a link was put"),
        "{message}"
    );

    // A directory above it swapped for a link: refused too.
    std::fs::remove_file(&file).unwrap();
    std::fs::rename(&data, dir.path().join("moved")).unwrap();
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    std::fs::write(dir.path().join("elsewhere/orders.jsonl"), "{\"id\": 3}\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), &data).unwrap();
    let err = read_file(&file, Some(&real), &opts(SourceFormat::Json), &schema)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("elsewhere"), "{err}");
}
