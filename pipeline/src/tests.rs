use std::path::PathBuf;

use crate::{Layer, Pipeline, TableRef};

const VALID: &str = r#"
pipeline: p
lake: /tmp/lake
sources:
  - { name: api, format: json, path: in/*.jsonl }
bronze:
  - { name: orders, source: api }
silver:
  - name: orders
    from: bronze.orders
    keys: [id]
    columns:
      - { name: id, type: bigint }
gold:
  - name: totals
    sql: SELECT count(*) AS n FROM silver.orders
"#;

fn parse(yaml: &str) -> Result<Pipeline, Vec<String>> {
    Pipeline::parse(yaml.to_string(), "p.yaml".into(), PathBuf::from("/work"))
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

#[test]
fn a_valid_spec_resolves_paths_and_dependencies() {
    let p = parse(VALID).unwrap();
    assert_eq!(p.lake_root, "/tmp/lake");
    assert_eq!(p.source_location(&p.spec.sources[0]), "/work/in/*.jsonl");
    let gold = TableRef::new(Layer::Gold, "totals");
    assert_eq!(p.table_uri(&gold), "/tmp/lake/gold/totals");
    assert!(
        p.dag
            .deps(&gold)
            .contains(&TableRef::new(Layer::Silver, "orders"))
    );
}

#[test]
fn every_error_is_reported_with_its_place() {
    let yaml = VALID
        .replace("source: api", "source: apj")
        .replace("type: bigint", "type: bigintt")
        .replace(
            "lake: /tmp/lake",
            "lake: /tmp/lake\nschedule: \"61 * * * *\"",
        );
    let errors = parse(&yaml).unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("p.yaml:8:")
                && e.contains("bronze[0].source: unknown source 'apj'")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("silver[0].columns[0].type: unknown type 'bigintt'")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("schedule: invalid cron expression")),
        "{errors:#?}"
    );
}

#[test]
fn yaml_errors_carry_the_line() {
    let errors = parse(&VALID.replace("format: json", "format: xml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("p.yaml:5:"), "{errors:?}");
}

#[test]
fn duplicate_names_and_bad_filters_are_errors() {
    let yaml = VALID.replace(
        "      - { name: id, type: bigint }",
        "      - { name: id, type: bigint }\n      - { name: id }\n    filters: [\"id >\"]",
    );
    let errors = parse(&yaml).unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("duplicate column 'id'")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("silver[0].filters[0]: invalid SQL expression")),
        "{errors:#?}"
    );
}

#[test]
fn moving_the_lake_or_the_sources_does_not_change_how_tables_are_computed() {
    let base = parse(VALID).unwrap().computation();
    let moved = VALID
        .replace(
            "lake: /tmp/lake",
            "lake: { root: s3://bucket/lake, storage_options: { region: eu } }",
        )
        .replace("path: in/*.jsonl", "path: /mnt/raw/in/*.jsonl");
    assert_eq!(parse(&moved).unwrap().computation(), base);
    let changed = VALID.replace("type: bigint", "type: int");
    assert_ne!(parse(&changed).unwrap().computation(), base);
    let renamed = VALID
        .replace("name: api, format: json", "name: feed, format: json")
        .replace("source: api", "source: feed");
    assert_ne!(parse(&renamed).unwrap().computation(), base);
}
