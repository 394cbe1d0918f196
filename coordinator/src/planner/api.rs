//! Bronze from an HTTP API: one task reads every page, after the `since` value the table's
//! last commit recorded; the new largest value comes back with the task's result and is
//! recorded in the same commit as the records ([`CommitPlan::read_up_to`]). The commit is
//! made on the version the old value was read at, so two runs reading the same records
//! conflict, and a run that dies reads them again. Without `since`, each run reads every
//! record and replaces the table's.

use anyhow::Result;
use datafusion::arrow::datatypes::Schema;
use medallion_pipeline::TableRef;
use medallion_pipeline::spec::HttpSource;
use medallion_proto::{ApiRead, IngestWork};

use super::{RunContext, SourceChanges, StagePlan, last_position, positioned_commit};

impl RunContext<'_> {
    pub(super) async fn plan_api(&self, table: &TableRef, api: &HttpSource) -> Result<StagePlan> {
        let target = self.target(table, None);
        let existing = medallion_lake::open_table(&target.uri, &self.storage_options).await?;
        let rebuild = self.rebuild.contains(table);
        let since = match (&existing, &api.since) {
            (Some(t), Some(_)) if !rebuild => last_position(t, table)
                .await?
                .and_then(|p| p.get("since").cloned()),
            _ => None,
        };
        // The table's data columns; the task adds the fields new in what it reads.
        let data = match &existing {
            Some(t) => super::existing_data_columns(t)?,
            None => Schema::empty(),
        };
        let read = IngestWork {
            api: Some(ApiRead {
                since_json: since.map(|s| s.to_string()).unwrap_or_default(),
            }),
            ..Default::default()
        };
        // The position comes back with the task's result (`CommitPlan::read_up_to`).
        let (commit, refresh) = positioned_commit(
            existing.as_ref(),
            api.since.is_some(),
            rebuild,
            None,
            "an API source without since is read whole each run",
        );
        Ok(StagePlan {
            tasks: self.slice_tasks(&target, &data, [read])?,
            commit,
            target,
            engine: None,
            refresh,
            source_changes: SourceChanges::default(),
        })
    }
}
