//! Bronze from a database: the rows past the cursor the table's last ingestion recorded, up
//! to the largest cursor when the run plans, in ranges read at the same time.
//!
//! The cursor the run read up to goes into the bronze commit's info ([`INFO_POSITION`]), in
//! the same atomic commit as the rows; the commit is made on the version the previous cursor
//! was read at, so two runs reading the same rows conflict instead of both landing. A run
//! that dies before its commit leaves the cursor where it was: the next run reads those rows
//! again, and nothing twice.

use anyhow::{Context, Result, anyhow};
use medallion_pipeline::TableRef;
use medallion_pipeline::spec::{PostgresSource, SourceSpec};
use medallion_proto::{DatabaseSlice, IngestWork};
use medallion_sources::postgres::{Connection, Key, Postgres};

use super::{
    INFO_POSITION, RunContext, SourceChanges, StagePlan, last_position, positioned_commit,
};

impl RunContext<'_> {
    pub(super) async fn plan_database(
        &self,
        table: &TableRef,
        source: &SourceSpec,
        pg: &PostgresSource,
    ) -> Result<StagePlan> {
        let name = &source.name.value;
        let target = self.target(table, None);
        let connection =
            Connection::resolve(self.pipeline, pg).map_err(|e| anyhow!("source '{name}': {e}"))?;
        let db = Postgres::connect(pg, name, &connection).await?;
        let existing = medallion_lake::open_table(&target.uri, &self.storage_options).await?;
        let rebuild = self.rebuild.contains(table);
        let after = match (&existing, &pg.cursor) {
            (Some(t), Some(_)) if !rebuild => match last_position(t, table).await? {
                Some(position) => Some(
                    serde_json::from_value::<Key>(position["cursor"].clone()).with_context(
                        || format!("{table}: unreadable {INFO_POSITION}: {position}"),
                    )?,
                ),
                None => None,
            },
            _ => None,
        };
        let plan = db.plan(after.as_ref()).await?;
        let data = plan.schema.clone();
        let position = plan
            .cursor
            .as_ref()
            .map(|k| serde_json::json!({ "cursor": k }));
        let (commit, refresh) = positioned_commit(
            existing.as_ref(),
            pg.cursor.is_some(),
            rebuild,
            position,
            "a database source without a cursor is read whole each run",
        );
        let columns_added = match &existing {
            Some(t) => {
                let columns = t.snapshot()?.snapshot().arrow_schema();
                data.fields()
                    .iter()
                    .map(|f| f.name())
                    .filter(|n| columns.field_with_name(n).is_err())
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        let slices = plan.slices.into_iter().map(|slice| IngestWork {
            database: Some(DatabaseSlice {
                sql: slice.sql,
                describe: slice.describe,
            }),
            ..Default::default()
        });
        let tasks = self.slice_tasks(&target, &data, slices)?;
        Ok(StagePlan {
            tasks,
            commit,
            target,
            engine: None,
            refresh,
            source_changes: SourceChanges {
                columns_added,
                ..Default::default()
            },
        })
    }
}
