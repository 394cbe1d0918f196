//! What the planner decides for each kind of table, on real Delta tables in a scratch lake:
//! which files and versions are read, where the tasks write, and how the commit goes.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::CommitProperties;
use medallion_pipeline::{Layer, Pipeline, TableRef};
use medallion_proto::task::Work;
use tempfile::TempDir;

use deltalake::protocol::SaveMode;
use medallion_pipeline::report::{Engine, Refresh};

use super::{
    CommitPlan, INFO_INPUTS, INFO_QUARANTINED, INFO_SPEC, Inputs, MAX_STAGE_TASKS, RunContext,
    files_per_ingest_task, inputs_info, spec_fingerprint,
};
use crate::testing::pipeline;

const SILVER: &str = "silver:\n  - name: orders\n    from: bronze.orders\n    keys: [id]\n    partitions: 3\n    mode: MODE\n    columns:\n      - { name: id, type: bigint }\n";
const GOLD: &str = "gold:\n  - name: totals\n    sql: SELECT count(*) AS n FROM silver.orders\n";

fn bronze() -> TableRef {
    TableRef::new(Layer::Bronze, "orders")
}

fn silver() -> TableRef {
    TableRef::new(Layer::Silver, "orders")
}

fn context(pipeline: &Pipeline) -> RunContext<'_> {
    RunContext {
        run_id: "r1",
        pipeline,
        storage_options: Default::default(),
        ingested_at_micros: 1,
        ballista: None,
        full_refresh: false,
        rebuild: &NOTHING_REBUILT,
        pending: &NOTHING_REBUILT,
    }
}

static NOTHING_REBUILT: std::collections::BTreeSet<TableRef> = std::collections::BTreeSet::new();

/// Commits rows with these ids and `_source_file`s to `table`, with `info` in the commit.
async fn commit_rows(
    p: &Pipeline,
    table: &TableRef,
    files: &[&str],
    info: Vec<(String, serde_json::Value)>,
) -> u64 {
    write_rows(p, table, files, info, SaveMode::Append).await
}

async fn write_rows(
    p: &Pipeline,
    table: &TableRef,
    files: &[&str],
    info: Vec<(String, serde_json::Value)>,
    mode: SaveMode,
) -> u64 {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("_source_file", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (0..files.len() as i64).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(StringArray::from(files.to_vec())),
        ],
    )
    .unwrap();
    let uri = p.table_uri(table);
    let handle = match medallion_lake::open_table(&uri, &Default::default())
        .await
        .unwrap()
    {
        Some(t) => t,
        None => medallion_lake::table_handle(&uri, &Default::default()).unwrap(),
    };
    let written = handle
        .write(vec![batch])
        .with_save_mode(mode)
        .with_commit_properties(CommitProperties::default().with_metadata(info))
        .await
        .unwrap();
    written.version().unwrap()
}

/// The commit info of a table computed from `inputs` with the pipeline's spec.
fn computed_info(p: &Pipeline, inputs: &Inputs) -> Vec<(String, serde_json::Value)> {
    vec![
        (INFO_INPUTS.to_string(), inputs_info(inputs)),
        (
            INFO_SPEC.to_string(),
            serde_json::json!(spec_fingerprint(p)),
        ),
    ]
}

fn scratch(more: &str) -> (TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), more);
    (dir, p)
}

#[tokio::test]
async fn a_new_bronze_table_appends_every_file_partitioned_by_ingestion_date() {
    let (_dir, p) = scratch("");
    let plan = context(&p).plan(&bronze()).await.unwrap();
    match &plan.commit {
        CommitPlan::Append {
            files,
            ledger_version,
            ..
        } => {
            assert_eq!(
                (files.as_slice(), *ledger_version),
                (["a.jsonl".to_string()].as_slice(), None)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.target.partition_columns, ["_ingestion_date"]);
    assert!(!plan.target.is_staged_apart());
    let task = &plan.tasks[0];
    assert_eq!(plan.tasks.len(), 1);
    assert_eq!(
        (task.output_uri.as_str(), task.table.as_str()),
        (plan.target.uri.as_str(), "bronze.orders")
    );
    assert_eq!(task.partition_columns, plan.target.partition_columns);
    let Some(Work::Ingest(work)) = &task.work else {
        panic!("{task:?}")
    };
    assert_eq!(
        (work.files[0].id.as_str(), work.ingested_at_micros),
        ("a.jsonl", 1)
    );
    let data = work.data_schema().unwrap();
    assert_eq!(data.field(0).name(), "id", "{data:?}");
}

#[test]
fn a_bronze_stage_has_at_most_ten_thousand_tasks() {
    assert_eq!(files_per_ingest_task(4, 100), 4);
    assert_eq!(files_per_ingest_task(1, MAX_STAGE_TASKS), 1);
    for files in [MAX_STAGE_TASKS + 1, 3_000_000] {
        let per_task = files_per_ingest_task(1, files);
        assert!(
            files.div_ceil(per_task) <= MAX_STAGE_TASKS,
            "{files}: {per_task}"
        );
    }
}

#[tokio::test]
async fn bronze_reads_only_the_files_its_rows_do_not_hold_and_commits_on_that_version() {
    let (dir, p) = scratch("");
    let version = commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&bronze()).await.unwrap();
    assert!(plan.tasks.is_empty(), "a.jsonl is in the table already");

    std::fs::write(dir.path().join("in/b.jsonl"), "{\"id\": 2}\n").unwrap();
    let plan = context(&p).plan(&bronze()).await.unwrap();
    match &plan.commit {
        CommitPlan::Append {
            files,
            ledger_version,
            ..
        } => {
            assert_eq!(files, &["b.jsonl".to_string()]);
            assert_eq!(*ledger_version, Some(version));
        }
        other => panic!("{other:?}"),
    }
    let Some(Work::Ingest(work)) = &plan.tasks[0].work else {
        panic!()
    };
    assert_eq!(work.files.len(), 1);
}

#[tokio::test]
async fn silver_overwrites_from_one_pinned_input_version_in_key_partitions() {
    let (_dir, p) = scratch(&SILVER.replace("MODE", "overwrite"));
    let version = commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    let inputs = Inputs::from([(TableRef::new(Layer::Bronze, "orders"), version)]);
    assert!(matches!(&plan.commit, CommitPlan::Overwrite { inputs: i } if *i == inputs));
    assert_eq!(plan.tasks.len(), 3);
    for (n, task) in plan.tasks.iter().enumerate() {
        let Some(Work::Transform(w)) = &task.work else {
            panic!()
        };
        assert_eq!(
            (w.partition, w.partitions, w.input_version),
            (n as u32, 3, version)
        );
        assert_eq!(task.output_uri, plan.target.uri);
        assert!(task.quarantine_uri.is_empty());
    }
    assert!(plan.target.partition_columns.is_empty());
}

#[tokio::test]
async fn merging_into_a_table_that_does_not_exist_writes_it() {
    let (_dir, p) = scratch(&SILVER.replace("MODE", "merge"));
    commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    assert!(
        matches!(plan.commit, CommitPlan::Overwrite { .. }),
        "{:?}",
        plan.commit
    );
    assert!(!plan.target.is_staged_apart());
}

#[tokio::test]
async fn merging_into_a_table_stages_the_files_apart_for_the_run() {
    let (_dir, p) = scratch(&SILVER.replace("MODE", "merge"));
    commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    commit_rows(&p, &silver(), &["x"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    match &plan.commit {
        CommitPlan::Merge { keys, .. } => assert_eq!(keys, &["id".to_string()]),
        other => panic!("{other:?}"),
    }
    assert!(plan.target.is_staged_apart());
    assert!(
        plan.target.staged_uri.contains("r1"),
        "{}",
        plan.target.staged_uri
    );
    assert!(
        plan.tasks
            .iter()
            .all(|t| t.output_uri == plan.target.staged_uri)
    );
}

#[tokio::test]
async fn a_quarantine_check_gives_the_table_a_quarantine_target() {
    let spec = SILVER.replace("MODE", "overwrite")
        + "    checks:\n      - { name: small, check: expression, expr: \"id < 5\", severity: warning, action: quarantine }\n";
    let (_dir, p) = scratch(&spec);
    commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    let q = plan
        .target
        .quarantine
        .as_deref()
        .expect("a quarantine target");
    assert_eq!(q.table.to_string(), "silver.orders__quarantine");
    assert!(plan.tasks.iter().all(|t| t.quarantine_uri == q.uri));
}

#[tokio::test]
async fn a_table_computed_from_the_same_inputs_and_spec_is_up_to_date() {
    let (_dir, p) = scratch(&SILVER.replace("MODE", "overwrite"));
    let version = commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let inputs = Inputs::from([(TableRef::new(Layer::Bronze, "orders"), version)]);
    commit_rows(&p, &silver(), &["x"], computed_info(&p, &inputs)).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    assert!(plan.tasks.is_empty());

    // New input rows: computed again.
    commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
    assert_eq!(context(&p).plan(&silver()).await.unwrap().tasks.len(), 3);
}

#[tokio::test]
async fn a_changed_spec_computes_the_table_again() {
    let (dir, p) = scratch(&SILVER.replace("MODE", "overwrite"));
    let version = commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let inputs = Inputs::from([(TableRef::new(Layer::Bronze, "orders"), version)]);
    commit_rows(&p, &silver(), &["x"], computed_info(&p, &inputs)).await;
    let changed = pipeline(
        dir.path(),
        &SILVER
            .replace("MODE", "overwrite")
            .replace("partitions: 3", "partitions: 4"),
    );
    assert_eq!(
        context(&changed).plan(&silver()).await.unwrap().tasks.len(),
        4
    );
}

#[tokio::test]
async fn a_table_whose_quarantined_rows_did_not_land_is_computed_again() {
    let (_dir, p) = scratch(&SILVER.replace("MODE", "overwrite"));
    let version = commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let inputs = Inputs::from([(TableRef::new(Layer::Bronze, "orders"), version)]);
    let mut info = computed_info(&p, &inputs);
    info.push((INFO_QUARANTINED.to_string(), serde_json::json!(true)));
    commit_rows(&p, &silver(), &["x"], info).await;
    assert_eq!(context(&p).plan(&silver()).await.unwrap().tasks.len(), 3);
}

#[tokio::test]
async fn gold_runs_one_local_task_over_pinned_versions_of_what_it_reads() {
    let (_dir, p) = scratch(&(SILVER.replace("MODE", "overwrite") + GOLD));
    commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    commit_rows(&p, &silver(), &["x"], Vec::new()).await;
    let version = commit_rows(&p, &silver(), &["y"], Vec::new()).await;
    let plan = context(&p)
        .plan(&TableRef::new(Layer::Gold, "totals"))
        .await
        .unwrap();
    assert_eq!(plan.engine, Some(Engine::Local));
    let orders = TableRef::new(Layer::Silver, "orders");
    let inputs = Inputs::from([(orders.clone(), version)]);
    assert!(matches!(&plan.commit, CommitPlan::Overwrite { inputs: i } if *i == inputs));
    let Some(Work::Aggregate(work)) = &plan.tasks[0].work else {
        panic!()
    };
    assert_eq!(work.inputs().unwrap(), vec![(orders, version)]);
    assert!(work.ballista_scheduler.is_empty());
}

#[tokio::test]
async fn an_input_table_without_data_is_an_error_naming_it() {
    let (_dir, p) = scratch(&SILVER.replace("MODE", "overwrite"));
    let e = context(&p).plan(&silver()).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("input table bronze.orders has no data yet"),
        "{e:#}"
    );
}

/// A silver table over bronze with `latest_by` kept as its column `at`.
const SILVER_LATEST: &str = "silver:\n  - name: orders\n    from: bronze.orders\n    keys: [id]\n    partitions: 3\n    mode: merge\n    latest_by: to_timestamp(at)\n    columns:\n      - { name: id, type: bigint }\n      - { name: at, expr: to_timestamp(at), type: timestamp }\n";

/// Bronze at a first version, and silver computed from it; returns that version.
async fn computed_silver(p: &Pipeline) -> u64 {
    let v0 = commit_rows(p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let info = computed_info(p, &Inputs::from([(bronze(), v0)]));
    commit_rows(p, &silver(), &["x"], info).await;
    v0
}

#[tokio::test]
async fn after_bronze_only_grew_silver_reads_the_new_rows_and_merges_them_by_latest() {
    let (_dir, p) = scratch(SILVER_LATEST);
    let v0 = computed_silver(&p).await;
    let v1 = commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
    let v2 = commit_rows(&p, &bronze(), &["c.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    assert_eq!(
        plan.refresh,
        Some(Refresh::Incremental { after_version: v0 })
    );
    match &plan.commit {
        CommitPlan::Merge {
            latest,
            incremental,
            inputs,
            ..
        } => assert_eq!(
            (latest.as_deref(), *incremental, inputs),
            (Some("at"), true, &Inputs::from([(bronze(), v2)]))
        ),
        other => panic!("{other:?}"),
    }
    assert!(plan.commit.is_incremental());
    assert!(plan.target.is_staged_apart());
    assert_eq!(plan.tasks.len(), 3);
    for task in &plan.tasks {
        let Some(Work::Transform(w)) = &task.work else {
            panic!("{task:?}")
        };
        assert_eq!((w.changes_after, w.input_version), (Some(v0), v2));
    }
    assert!(v1 > v0);
}

#[tokio::test]
async fn a_table_without_keys_adds_the_new_rows() {
    let spec = SILVER
        .replace("MODE", "overwrite")
        .replace("    keys: [id]\n", "");
    let (_dir, p) = scratch(&spec);
    let v0 = computed_silver(&p).await;
    commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    assert_eq!(
        plan.refresh,
        Some(Refresh::Incremental { after_version: v0 })
    );
    assert!(
        matches!(plan.commit, CommitPlan::Insert { .. }),
        "{:?}",
        plan.commit
    );
    assert!(!plan.target.is_staged_apart());
}

/// Why a plan of silver reads all its input.
async fn full_reason(p: &Pipeline, full_refresh: bool) -> String {
    let run = RunContext {
        full_refresh,
        ..context(p)
    };
    match run.plan(&silver()).await.unwrap().refresh {
        Some(Refresh::Full { reason }) => reason,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn silver_reads_all_its_input_when_bronze_was_rewritten_or_when_asked() {
    let (_dir, p) = scratch(SILVER_LATEST);
    computed_silver(&p).await;
    commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
    assert_eq!(full_reason(&p, true).await, "asked for");
    write_rows(&p, &bronze(), &["c.jsonl"], Vec::new(), SaveMode::Overwrite).await;
    let reason = full_reason(&p, false).await;
    assert!(
        reason.starts_with("bronze.orders changed other than by appending")
            && reason.contains("removed rows"),
        "{reason}"
    );
    let plan = context(&p).plan(&silver()).await.unwrap();
    assert!(!plan.commit.is_incremental());
    assert!(plan.tasks.iter().all(|t| matches!(
        &t.work,
        Some(Work::Transform(w)) if w.changes_after.is_none()
    )));
}

#[tokio::test]
async fn silver_reads_all_its_input_when_latest_by_is_not_kept_or_the_table_is_new() {
    let (_dir, p) = scratch(&SILVER_LATEST.replace(
        "      - { name: at, expr: to_timestamp(at), type: timestamp }\n",
        "      - { name: at, type: timestamp }\n",
    ));
    commit_rows(&p, &bronze(), &["a.jsonl"], Vec::new()).await;
    assert_eq!(full_reason(&p, false).await, "the table is new");
    let (_dir, p) = scratch(&SILVER_LATEST.replace(
        "      - { name: at, expr: to_timestamp(at), type: timestamp }\n",
        "      - { name: at, type: timestamp }\n",
    ));
    computed_silver(&p).await;
    commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
    assert!(
        full_reason(&p, false)
            .await
            .starts_with("latest_by is not one of its columns")
    );
}

/// A CDC table over bronze; `MORE` is replaced by more of its settings.
const SILVER_CDC: &str = "silver:\n  - name: orders\n    from: bronze.orders\n    keys: [id]\n    mode: cdc\n    sequence_by: seq\n    columns:\n      - { name: id, type: bigint }\n      - { name: seq, type: bigint }\nMORE";

#[tokio::test]
async fn a_cdc_table_replaces_the_touched_keys_unless_it_truncates_or_quarantines() {
    let (_dir, p) = scratch(&SILVER_CDC.replace("MORE", ""));
    let v0 = computed_silver(&p).await;
    commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
    let plan = context(&p).plan(&silver()).await.unwrap();
    assert_eq!(
        plan.refresh,
        Some(Refresh::Incremental { after_version: v0 })
    );
    assert!(
        matches!(
            plan.commit,
            CommitPlan::Merge {
                replace: true,
                incremental: true,
                ..
            }
        ),
        "{:?}",
        plan.commit
    );
    for (more, reason) in [
        (
            "    apply_as_truncates: \"seq < 0\"\n",
            "a truncate empties every key, so a CDC table that applies them is recomputed",
        ),
        (
            "    checks:\n      - { name: small, check: range, column: seq, max: 9, severity: warning, action: quarantine }\n",
            "a CDC table that quarantines rows is recomputed, so none is quarantined twice",
        ),
    ] {
        let (_dir, p) = scratch(&SILVER_CDC.replace("MORE", more));
        computed_silver(&p).await;
        commit_rows(&p, &bronze(), &["b.jsonl"], Vec::new()).await;
        assert_eq!(full_reason(&p, false).await, reason);
    }
}

const GOLD_BY_ID: &str =
    "gold:\n  - name: by_id\n    sql: SELECT id, count(*) AS n FROM silver.orders GROUP BY id\n";

/// Silver with its change data feed on (or not), and gold computed from its first version;
/// then one more silver commit. Returns the gold table's plan.
async fn gold_after_one_silver_commit(p: &Pipeline, feed: bool) -> super::StagePlan {
    let v0 = commit_rows(p, &bronze(), &["a.jsonl"], Vec::new()).await;
    let info = computed_info(p, &Inputs::from([(bronze(), v0)]));
    let first = commit_rows(p, &silver(), &["x"], info).await;
    let uri = p.table_uri(&silver());
    let mut table = medallion_lake::open_table(&uri, &Default::default())
        .await
        .unwrap()
        .unwrap();
    let mut read = first;
    if feed {
        table = table
            .set_tbl_properties()
            .with_properties(
                [("delta.enableChangeDataFeed".to_string(), "true".to_string())].into(),
            )
            .await
            .unwrap();
        read = table.version().unwrap();
    }
    let gold = TableRef::new(Layer::Gold, "by_id");
    commit_rows(
        p,
        &gold,
        &["g"],
        computed_info(p, &Inputs::from([(silver(), read)])),
    )
    .await;
    commit_rows(p, &silver(), &["y"], Vec::new()).await;
    context(p).plan(&gold).await.unwrap()
}

#[tokio::test]
async fn gold_recomputes_only_touched_groups_when_its_one_changed_input_records_changes() {
    let (_dir, p) = scratch(&(SILVER.replace("MODE", "overwrite") + GOLD_BY_ID));
    let plan = gold_after_one_silver_commit(&p, true).await;
    let Some(Refresh::Incremental { after_version }) = plan.refresh else {
        panic!("{:?}", plan.refresh)
    };
    let Some(Work::Aggregate(work)) = &plan.tasks[0].work else {
        panic!()
    };
    let regroup = work.regroup().unwrap().expect("a regroup");
    assert_eq!(regroup.input, silver());
    assert_eq!(regroup.after_version, after_version);
    assert_eq!(regroup.key.input_column, "id");
    assert_eq!(regroup.table_version, 0);
    assert!(matches!(plan.commit, CommitPlan::Overwrite { .. }));
}

#[tokio::test]
async fn gold_is_recomputed_in_full_when_its_input_records_no_changes() {
    let (_dir, p) = scratch(&(SILVER.replace("MODE", "overwrite") + GOLD_BY_ID));
    let plan = gold_after_one_silver_commit(&p, false).await;
    let Some(Refresh::Full { reason }) = plan.refresh else {
        panic!("{:?}", plan.refresh)
    };
    assert_eq!(
        reason,
        "silver.orders does not record its changes (change_data_feed: true)"
    );
    let Some(Work::Aggregate(work)) = &plan.tasks[0].work else {
        panic!()
    };
    assert_eq!(work.regroup().unwrap(), None);
}

#[tokio::test]
async fn inference_fetches_only_the_first_whole_lines_of_a_large_object() {
    let dir = TempDir::new().unwrap();
    let lines: String = (0..1000).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    std::fs::write(dir.path().join("a.jsonl"), &lines).unwrap();
    let url = format!("file://{}/a.jsonl", dir.path().display());
    let opts = std::collections::HashMap::new();
    let head = medallion_lake::objects::local_head_copy(&url, &opts, dir.path(), 100)
        .await
        .unwrap();
    let got = std::fs::read_to_string(&head.path).unwrap();
    assert!(
        got.len() <= 100 && got.ends_with('\n') && lines.starts_with(&got),
        "{got}"
    );
    // Ten lines of ten bytes: `{"id": 0}` to `{"id": 9}`.
    assert_eq!(got.lines().count(), 10);
    let whole = medallion_lake::objects::local_head_copy(&url, &opts, dir.path(), 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&whole.path).unwrap(), lines);
}

/// An API source: one task, asking after the `since` the table's newest commit with one
/// recorded, appended on the version that was read at; the task's answer becomes the commit's
/// position. Without `since`, every record replaces the table's.
#[tokio::test]
async fn an_api_source_reads_after_the_recorded_since_and_records_what_its_task_read() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |since: &str| {
        format!(
            "pipeline: t\nlake: lake\nsources:\n  - name: api\n    http: {{ url: 'http://127.0.0.1:9/o'{since} }}\n\
             bronze:\n  - {{ name: orders, source: api }}\n"
        )
    };
    let parse =
        |yaml: String| Pipeline::parse(yaml, "t.yaml".into(), dir.path().to_path_buf()).unwrap();
    let p = parse(spec(", since: { param: after, field: at }"));
    let api_read = |plan: &super::StagePlan| match &plan.tasks[..] {
        [task] => match &task.work {
            Some(Work::Ingest(w)) => w.api.clone().unwrap().since_json,
            other => panic!("{other:?}"),
        },
        tasks => panic!("{} tasks", tasks.len()),
    };
    let plan = context(&p).plan(&bronze()).await.unwrap();
    assert_eq!(api_read(&plan), "");
    assert!(matches!(
        plan.commit,
        CommitPlan::Append {
            ledger_version: None,
            ..
        }
    ));

    let position = serde_json::json!({ "since": "2024-05-01T00:00:00Z" });
    let info = vec![(super::INFO_POSITION.to_string(), position.clone())];
    let v0 = commit_rows(&p, &bronze(), &["u"], info).await;
    let v1 = commit_rows(&p, &bronze(), &["u"], Vec::new()).await;
    assert_eq!((v0, v1), (0, 1));
    let plan = context(&p).plan(&bronze()).await.unwrap();
    assert_eq!(api_read(&plan), "\"2024-05-01T00:00:00Z\"");
    assert!(matches!(
        plan.commit,
        CommitPlan::Append {
            ledger_version: Some(1),
            ..
        }
    ));
    let answered = medallion_proto::TaskResult {
        position_json: r#"{"since":"2024-06-01T00:00:00Z"}"#.into(),
        ..Default::default()
    };
    match plan.commit.read_up_to(&[answered]).unwrap() {
        CommitPlan::Append { position, .. } => {
            assert_eq!(position.unwrap()["since"], "2024-06-01T00:00:00Z")
        }
        other => panic!("{other:?}"),
    }

    let whole = parse(spec(""));
    let plan = context(&whole).plan(&bronze()).await.unwrap();
    assert_eq!(api_read(&plan), "");
    assert!(matches!(
        plan.commit,
        CommitPlan::Replace { position: None }
    ));
    assert!(matches!(plan.refresh, Some(Refresh::Full { .. })));
}
