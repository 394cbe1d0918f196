//! Consistent snapshots across tables: every successful run appends the versions of all the
//! pipeline's tables, as the run left them, to the Delta table `<lake>/_medallion/snapshots`
//! (a row per run). Delta has no transaction across tables; reading every table at one run's
//! versions (`medallion sql --snapshot <run>`, the Flight SQL session setting) gives readers
//! one anyway: a dashboard never mixes a new `customer_360` with an old
//! `product_performance`.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use datafusion::arrow::array::{ArrayRef, AsArray, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::DataType;
use medallion_pipeline::sql::quote_literal;
use medallion_pipeline::{Pipeline, TableRef};

/// The versions of a pipeline's tables that one run left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub run_id: String,
    pub versions: BTreeMap<TableRef, u64>,
}

/// Records the latest version of every table of `pipeline` as run `run_id`'s snapshot.
/// Called when the run has succeeded, with the run lease still held, so no other run moves
/// a table in between.
pub async fn record(pipeline: &Pipeline, run_id: &str) -> Result<Snapshot> {
    let opts = pipeline.lake_options();
    let mut versions = BTreeMap::new();
    for table in pipeline.dag.tables() {
        let uri = pipeline.table_uri(table);
        if let Some(t) = medallion_lake::open_table(&uri, &opts).await?
            && let Some(version) = t.version()
        {
            versions.insert(table.clone(), version);
        }
    }
    let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    let recorded = TimestampMicrosecondArray::from(vec![chrono::Utc::now().timestamp_micros()])
        .with_timezone("UTC");
    let by_name: BTreeMap<String, u64> =
        versions.iter().map(|(t, v)| (t.to_string(), *v)).collect();
    let batch = medallion_lake::batch_of(vec![
        ("run_id", text(run_id), false),
        ("pipeline", text(pipeline.name()), false),
        ("recorded_at", Arc::new(recorded), false),
        ("versions", text(&serde_json::to_string(&by_name)?), false),
    ])?;
    medallion_lake::append(&pipeline.snapshots_uri(), &opts, batch).await?;
    Ok(Snapshot {
        run_id: run_id.to_string(),
        versions,
    })
}

/// The snapshot run `run_id` recorded; an error naming the run when it recorded none (it
/// failed, or is unknown).
pub async fn of_run(pipeline: &Pipeline, run_id: &str) -> Result<Snapshot> {
    let uri = pipeline.snapshots_uri();
    let opts = pipeline.lake_options();
    let sql = format!(
        "SELECT versions FROM snapshots WHERE run_id = {} AND pipeline = {}",
        quote_literal(run_id),
        quote_literal(pipeline.name())
    );
    let Some(batches) = medallion_lake::query_table(&uri, &opts, "snapshots", &sql).await? else {
        bail!("no run of this lake has recorded a snapshot yet ({uri} does not exist)");
    };
    let Some(found) = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0))
    else {
        bail!(
            "run '{run_id}' recorded no snapshot (only successful runs of pipeline '{}' do)",
            pipeline.name()
        );
    };
    // Delta's strings come back as string views.
    let text = datafusion::arrow::compute::cast(found, &DataType::Utf8)?;
    let by_name: BTreeMap<String, u64> = serde_json::from_str(text.as_string::<i32>().value(0))?;
    let versions = by_name
        .into_iter()
        .filter_map(|(t, v)| Some((t.parse().ok()?, v)))
        .collect();
    Ok(Snapshot {
        run_id: run_id.to_string(),
        versions,
    })
}
