use std::path::PathBuf;

use crate::{Layer, Pipeline, RunDate, TableRef};

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
fn a_postgres_source_is_checked_field_by_field() {
    let with = |postgres: &str| {
        VALID.replace(
            "  - { name: api, format: json, path: in/*.jsonl }",
            &format!("  - name: api\n    postgres: {{ {postgres} }}"),
        )
    };
    let p = parse(&with(
        "url: 'postgres://u@db:5432/shop', password_env: PW, table: public.orders, cursor: updated_at, partition_by: id, partitions: 8",
    ))
    .unwrap();
    let pg = p.spec.sources[0].postgres.as_ref().unwrap();
    assert_eq!(pg.value.partitions(), 8);
    let errors = parse(&with(
        "url: 'postgres://u:hunter2@db/shop', table: 'a.b.c', query: 'SELECT 1', cursor: 'x-y', partitions: 0",
    ))
    .unwrap_err();
    for expected in [
        "sources[0].postgres.url: a password does not belong in a spec",
        "sources[0].postgres.query: give table or query, not both",
        "sources[0].postgres.cursor: 'x-y' is not a column name",
        "sources[0].postgres.partitions: must be between 1 and 1024",
        "sources[0].postgres.partitions: needs partition_by",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected}: {errors:#?}"
        );
    }
    assert!(errors.iter().all(|e| !e.contains("hunter2")), "{errors:#?}");
    let errors = parse(&with("url: 'mysql://db/shop', table: t")).unwrap_err();
    assert!(
        errors[0].contains("'mysql://' is not a PostgreSQL URL"),
        "{errors:?}"
    );
    let both = VALID.replace(
        "path: in/*.jsonl }",
        "path: in/*.jsonl, postgres: { url: 'postgres://db/x', table: t } }",
    );
    let errors = parse(&both).unwrap_err();
    assert!(
        errors[0].contains("one of files (path), a database (postgres), an API (http) or a stream"),
        "{errors:?}"
    );
    let neither = VALID.replace("format: json, path: in/*.jsonl", "format: json");
    let errors = parse(&neither).unwrap_err();
    assert!(errors[0].contains("needs a path"), "{errors:?}");
}

#[test]
fn an_http_source_is_checked_field_by_field() {
    let with = |http: &str| {
        VALID.replace(
            "  - { name: api, format: json, path: in/*.jsonl }",
            &format!("  - name: api\n    http: {{ {http} }}"),
        )
    };
    let ok = "url: 'https://api.x/v1/orders', records: /data, auth: { prefix: 'Bearer ', token_env: T }, \
              pagination: { style: cursor, param: cursor, next: /next }, since: { param: since, field: updated_at }";
    parse(&with(ok)).unwrap();
    let errors = parse(&with(
        "url: 'https://me:pw@api.x/', headers: { X-Api-Key: k }, params: { token: t }, records: data, \
         auth: { token_env: T, token_file: f }, pagination: { style: cursor }, requests_per_second: 0",
    ))
    .unwrap_err();
    for expected in [
        "sources[0].http.url: credentials do not belong in a spec",
        "sources[0].http.params.token: secrets do not belong",
        "sources[0].http.auth: give token_env or token_file",
        "sources[0].http.records: a JSON pointer starts with '/'",
        "sources[0].http.pagination: needs param",
        "sources[0].http.requests_per_second: must be above 0",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected}: {errors:#?}"
        );
    }
    let errors = parse(&with("url: 'ftp://x/'")).unwrap_err();
    assert!(
        errors[0].contains("'ftp://' is not an HTTP URL"),
        "{errors:?}"
    );
}

#[test]
fn a_kafka_source_is_checked_field_by_field() {
    let with = |kafka: &str| {
        VALID.replace(
            "  - { name: api, format: json, path: in/*.jsonl }",
            &format!("  - name: api\n    kafka: {{ {kafka} }}"),
        )
    };
    let ok = "brokers: ['k1:9092', 'k2:9092'], topic: orders.v1, records_per_task: 500, \
              sasl: { mechanism: scram-sha-512, username: u, password_env: KAFKA_PW }";
    let p = parse(&with(ok)).unwrap();
    let kafka = &p.spec.sources[0].kafka.as_ref().unwrap().value;
    assert_eq!(kafka.records_per_task(), 500);
    assert_eq!(kafka.on_data_loss, crate::spec::OnDataLoss::Fail);
    let errors = parse(&with(
        "brokers: ['k1', ':9092'], topic: 'no spaces', records_per_task: 0, \
         sasl: { mechanism: plain, username: u }",
    ))
    .unwrap_err();
    for expected in [
        "sources[0].kafka.brokers: 'k1' is not host:port",
        "sources[0].kafka.brokers: ':9092' is not host:port",
        "sources[0].kafka.topic: 'no spaces' is not a topic name",
        "sources[0].kafka.records_per_task: must be at least 1",
        "sources[0].kafka.sasl: give password_env or password_file",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected}: {errors:#?}"
        );
    }
    let errors = parse(&with("brokers: [], topic: t")).unwrap_err();
    assert!(
        errors[0].contains("sources[0].kafka.brokers: needs at least one broker"),
        "{errors:?}"
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

#[test]
fn sources_on_object_storage_take_options_over_the_lakes_but_never_credentials() {
    let on_s3 = VALID
        .replace(
            "lake: /tmp/lake",
            "lake: { root: s3://lake/p, storage_options: { AWS_REGION: eu-west-1, AWS_ALLOW_HTTP: 'true' } }",
        )
        .replace(
            "path: in/*.jsonl }",
            "path: s3://raw/in/*.jsonl, storage_options: { AWS_REGION: us-east-1 } }",
        );
    let pipeline = parse(&on_s3).unwrap();
    let source = pipeline.source("api").unwrap();
    assert_eq!(pipeline.source_location(source), "s3://raw/in/*.jsonl");
    let options = pipeline.source_storage_options(source);
    assert_eq!(options["AWS_REGION"], "us-east-1");
    assert_eq!(options["AWS_ALLOW_HTTP"], "true");

    let with_secret = on_s3.replace(
        "AWS_REGION: us-east-1",
        "AWS_REGION: us-east-1, AWS_SECRET_ACCESS_KEY: hunter2",
    );
    let errors = parse(&with_secret).unwrap_err();
    assert!(
        errors.iter().any(
            |e| e.contains("sources[0].storage_options.AWS_SECRET_ACCESS_KEY")
                && e.contains("environment")
        ),
        "{errors:#?}"
    );
    let elsewhere = VALID.replace("path: in/*.jsonl", "path: ftp://host/in/*.jsonl");
    let errors = parse(&elsewhere).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("'ftp://' is not a supported store")),
        "{errors:#?}"
    );
}

#[test]
fn templated_fields_are_rendered_for_the_run_interval() {
    let yaml = VALID
        .replace("path: in/*.jsonl", "path: \"in/{{ ds }}/*.jsonl\"")
        .replace(
            "      - { name: id, type: bigint }",
            "      - { name: id, type: bigint }\n    filters: [\"'{{ ds_nodash }}' <> ''\"]",
        )
        .replace(
            "SELECT count(*) AS n FROM silver.orders",
            "SELECT count(*) AS n, '{{ data_interval_end }}' AS upto FROM silver.orders",
        );
    let day = chrono::NaiveDate::from_ymd_opt(2026, 5, 17).unwrap();
    let p = Pipeline::parse_for(
        yaml.clone(),
        "p.yaml".into(),
        "/work".into(),
        RunDate::Date(day),
    )
    .unwrap();
    assert_eq!(p.spec.sources[0].path(), "in/2026-05-17/*.jsonl");
    assert_eq!(p.spec.silver[0].filters[0].value, "'20260517' <> ''");
    assert!(
        p.spec.gold[0]
            .sql
            .value
            .contains("'2026-05-18T00:00:00+00:00' AS upto")
    );
    // Files are known relative to the part of the path before the template.
    let root = p.source_root_template(&p.spec.sources[0]).unwrap();
    assert_eq!(root, PathBuf::from("/work/in"));
    // The computation is the template: another day is not another spec.
    let next = RunDate::Date(day.succ_opt().unwrap());
    let other = Pipeline::parse_for(yaml, "p.yaml".into(), "/work".into(), next).unwrap();
    assert_eq!(other.computation(), p.computation());
}

#[test]
fn an_unknown_template_variable_names_its_field() {
    let yaml = VALID.replace("path: in/*.jsonl", "path: \"in/{{ dss }}/*.jsonl\"");
    let errors = parse(&yaml).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("p.yaml:5:"), "{errors:?}");
    assert!(
        errors[0].contains("sources[0].path: template: undefined value"),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("variables: data_interval_end"),
        "{errors:?}"
    );
}

#[test]
fn schedules_retries_and_table_limits_are_validated_with_their_place() {
    let yaml = VALID
        .replace(
            "lake: /tmp/lake",
            "lake: /tmp/lake\nschedule:\n  cron: \"0 */4 * * *\"\n  timezone: Mars/Base\n\
             retries: { max_attempts: 0, delay: soon, backoff: fixed }",
        )
        .replace(
            "keys: [id]",
            "keys: [id]\n    timeout: forever\n    retries: { max_delay: 2days }",
        );
    let errors = parse(&yaml).unwrap_err();
    let has = |s: &str| errors.iter().any(|e| e.contains(s));
    assert!(
        has("p.yaml:5:") && has("schedule.timezone: 'Mars/Base' is not an IANA"),
        "{errors:#?}"
    );
    assert!(
        has("retries.max_attempts: must be between 1 and 100"),
        "{errors:#?}"
    );
    assert!(
        has("retries.delay: 'soon' is not a duration"),
        "{errors:#?}"
    );
    assert!(has("silver[0].timeout: 'forever'"), "{errors:#?}");
    assert!(has("silver[0].retries.max_delay: '2days'"), "{errors:#?}");
    assert_eq!(errors.len(), 5, "{errors:#?}");
}

#[test]
fn a_table_retries_with_its_own_settings_over_the_pipelines() {
    let yaml = VALID
        .replace(
            "lake: /tmp/lake",
            "lake: /tmp/lake\nretries: { max_attempts: 4, delay: 5m, backoff: fixed }\ntimeouts: { task: 1h }",
        )
        .replace("keys: [id]", "keys: [id]\n    timeout: 10m\n    retries: { max_attempts: 2 }");
    let p = parse(&yaml).unwrap();
    let silver = p.retry_policy(&TableRef::new(Layer::Silver, "orders"));
    assert_eq!(silver.max_attempts, 2);
    assert_eq!(silver.wait_after(3), std::time::Duration::from_secs(300));
    assert_eq!(silver.timeout, std::time::Duration::from_secs(600));
    let gold = p.retry_policy(&TableRef::new(Layer::Gold, "totals"));
    assert_eq!((gold.max_attempts, gold.timeout.as_secs()), (4, 3600));
}

#[test]
fn maintenance_is_validated_with_its_place_and_does_not_change_how_tables_are_computed() {
    let good = VALID.replace(
        "lake: /tmp/lake",
        "lake: /tmp/lake\nmaintenance:\n  checkpoint_interval: 10\n  optimize: { min_files: 4, \
         target_file_size: 64MiB, sort_by: { silver.orders: [id] } }\n  vacuum: { retention: 7d }",
    );
    let p = parse(&good).unwrap();
    assert_eq!(p.computation(), parse(VALID).unwrap().computation());
    let optimize = p.spec.maintenance.optimize.as_ref().unwrap();
    assert_eq!(optimize.min_files(), 4);

    let bad = VALID.replace(
        "lake: /tmp/lake",
        "lake: /tmp/lake\nmaintenance:\n  checkpoint_interval: 0\n  optimize: { min_files: 1, \
         target_file_size: 12 parsecs, sort_by: { gold.nope: [id], silver.orders: [] } }\n  \
         vacuum: { retention: 5m }",
    );
    let errors = parse(&bad).unwrap_err();
    let has = |s: &str| errors.iter().any(|e| e.contains(s));
    for expected in [
        "p.yaml:5:24: maintenance.checkpoint_interval",
        "maintenance.checkpoint_interval: must be at least 1",
        "maintenance.optimize.min_files: must be at least 2",
        "maintenance.optimize.target_file_size: unknown unit 'parsecs'",
        "maintenance.optimize.sort_by.gold.nope: unknown table 'gold.nope'",
        "maintenance.optimize.sort_by.silver.orders: name at least one column",
        "maintenance.vacuum.retention: '5m' is not a retention of an hour or more",
    ] {
        assert!(has(expected), "{expected}: {errors:#?}");
    }
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

#[test]
fn a_silver_table_is_unique_on_its_keys_unless_it_keeps_their_history() {
    let p = parse(VALID).unwrap();
    let silver = TableRef::new(Layer::Silver, "orders");
    assert_eq!(p.unique_key(&silver), Some(vec!["id"]));
    assert_eq!(p.unique_key(&TableRef::new(Layer::Bronze, "orders")), None);
    assert_eq!(p.unique_key(&TableRef::new(Layer::Gold, "totals")), None);
    let cdc = |scd: u8| {
        VALID.replace(
            "keys: [id]",
            &format!(
                "keys: [id]\n    mode: cdc\n    sequence_by: id\n    stored_as_scd_type: {scd}"
            ),
        )
    };
    assert_eq!(
        parse(&cdc(1)).unwrap().unique_key(&silver),
        Some(vec!["id"])
    );
    assert_eq!(parse(&cdc(2)).unwrap().unique_key(&silver), None);
    let no_keys = parse(&VALID.replace("    keys: [id]\n", "")).unwrap();
    assert_eq!(no_keys.unique_key(&silver), None);
}
