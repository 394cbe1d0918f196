//! The one place where tables change: quality checks on the next version, then one atomic
//! Delta commit per table per run.
//!
//! Executors have written data files but committed nothing. Here the files are checked as the
//! table would look after the commit; a failed critical check discards them and the table
//! stays as it was. Otherwise they become exactly one new Delta version.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{Column, JoinType};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::logical_expr::Expr;
use datafusion::object_store::ObjectStoreExt;
use datafusion::prelude::{DataFrame, SessionContext, col, lit};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TableProperty;
use futures::TryStreamExt;
use medallion_lake::StagedFiles;
use medallion_lake::changes::{CHANGE_DATA_FEED, records_changes};
use medallion_pipeline::spec::{self, CheckKind, CheckSpec};
use medallion_pipeline::{Pipeline, TableRef, meta};
use medallion_proto::TaskMetrics;

use crate::planner::{
    CommitPlan, INFO_COMMIT_ID, INFO_INPUTS, INFO_POSITION, INFO_QUARANTINED, INFO_SPEC, Target,
    inputs_info, spec_fingerprint,
};
use crate::quality;

mod merge;
use medallion_pipeline::report::{CheckResult, Metrics};

/// Data files written by a table's tasks (under its target's `staged_uri`), not yet part of
/// the table.
#[derive(Clone)]
pub struct Staged {
    pub adds: Vec<Add>,
    pub schema: SchemaRef,
    /// Rows `quarantine` checks took out, for `<table>__quarantine`.
    pub quarantine: Option<Box<Staged>>,
}

impl Staged {
    /// The dispatch directories its files (and its quarantined rows' files) are in.
    pub fn dispatch_dirs(&self) -> HashSet<String> {
        let quarantined = self.quarantine.iter().flat_map(|q| &q.adds);
        self.adds
            .iter()
            .chain(quarantined)
            .filter_map(|a| a.path.split_once('/').map(|(dir, _)| dir.to_string()))
            .collect()
    }
}

/// What a commit did.
pub struct Committed {
    /// The new version; `None` when bronze had no records to append and no version was
    /// made. (A merge that changes no row still makes one, to record the inputs it read.)
    pub version: Option<u64>,
    pub checks: Vec<CheckResult>,
    /// Time spent judging the table's next version by its checks.
    pub check_ms: u64,
    pub merge: Option<Metrics>,
    /// The commit's id (`medallion.commit_id` in its `commitInfo`).
    pub commit_id: String,
}

/// Why a table was not committed.
pub enum Rejected {
    /// Critical checks failed; their results are in the list.
    Checks(Vec<CheckResult>),
    /// Another writer committed to the table after this run read it (a concurrent run, or a
    /// second coordinator). Nothing of this attempt was committed; planning the table again
    /// sees the other writer's rows, so nothing is doubled.
    Conflict(anyhow::Error),
    Error(anyhow::Error),
}

impl From<anyhow::Error> for Rejected {
    fn from(e: anyhow::Error) -> Self {
        Rejected::Error(e)
    }
}

/// Identifies the run in every commit's `commitInfo`.
pub struct CommitContext<'a> {
    pub pipeline: &'a Pipeline,
    pub run_id: &'a str,
    pub storage_options: &'a HashMap<String, String>,
    /// The memory pool and spill space of the checks', merges' and rewrites' queries.
    pub runtime: &'a Arc<RuntimeEnv>,
}

impl CommitContext<'_> {
    /// A session for one of the commit's queries, within the runtime's memory limit.
    fn session(&self) -> SessionContext {
        medallion_lake::runtime::session(self.runtime)
    }

    /// Checks the next version of `table` and commits it, or discards the staged files.
    ///
    /// `screened` holds what the tasks' `drop` and `quarantine` checks took out; quarantined
    /// rows are committed to `<table>__quarantine` once the table's own commit has landed.
    ///
    /// Delta has no transaction across tables, so the table's commit records that it has
    /// quarantined rows, and the quarantine table's commit names the table's commit: a table
    /// whose quarantine commit is missing is not up to date (`planner::RunContext`), and the
    /// next run computes both again.
    pub async fn commit(
        &self,
        target: &Target,
        plan: &CommitPlan,
        staged: Staged,
        checks: &[CheckSpec],
        screened: &TaskMetrics,
    ) -> Result<Committed, Rejected> {
        let committed = self
            .commit_table(target, plan, &staged, checks, screened)
            .await;
        let Some(quarantine) = staged.quarantine else {
            return committed;
        };
        let table = &target.table;
        let quarantine_target = target
            .quarantine
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("{table} has no quarantine check"))?;
        let append = CommitPlan::Append {
            files: Vec::new(),
            ledger_version: None,
            reingest: Vec::new(),
            position: None,
        };
        let commit_id = match &committed {
            Ok(done) => quarantine_commit_id(&done.commit_id),
            Err(_) => {
                self.discard(quarantine_target, &quarantine).await;
                return committed;
            }
        };
        let quarantined = async {
            let opened = medallion_lake::open_table(&quarantine_target.uri, self.storage_options);
            let Some(t) = opened.await? else {
                return self
                    .create(quarantine_target, &append, &commit_id, &quarantine)
                    .await;
            };
            let replace = CommitPlan::Overwrite {
                inputs: Default::default(),
            };
            let plan = match schema_drift(
                &t.snapshot()?.snapshot().arrow_schema(),
                &quarantine.schema,
            ) {
                // Only new rows were screened: their failures join the earlier ones.
                None if plan.is_incremental() => append,
                // Every row was screened again: its failures replace the earlier ones, so
                // each failing row is there once.
                None => replace,
                // The table's columns changed: the quarantine table takes them too, in a
                // new version; rows quarantined before stay readable at the versions before.
                Some(drift) => {
                    tracing::warn!(table = %quarantine_target.table, %drift, "the quarantine table's columns change; earlier rows stay in its earlier versions");
                    replace
                }
            };
            self.write(quarantine_target, t, &plan, &commit_id, &quarantine)
                .await
        };
        quarantined.await.with_context(|| {
            format!("{table} is committed, but its quarantined rows are not; the next run writes both again")
        })?;
        committed
    }

    async fn commit_table(
        &self,
        target: &Target,
        plan: &CommitPlan,
        staged: &Staged,
        checks: &[CheckSpec],
        screened: &TaskMetrics,
    ) -> Result<Committed, Rejected> {
        if matches!(plan, CommitPlan::Append { .. }) && staged.adds.is_empty() {
            // The new files held no records (empty, or still being written): nothing to
            // append, and they will be looked at again next run.
            return Ok(Committed {
                version: None,
                checks: Vec::new(),
                check_ms: 0,
                merge: None,
                commit_id: String::new(),
            });
        }
        let existing = self.base(target, plan).await?;
        let base_version = existing.as_ref().and_then(DeltaTable::version);
        let commit_id = uuid::Uuid::new_v4().simple().to_string();
        let started = std::time::Instant::now();
        let checks = self
            .judge(target, plan, staged, existing.as_ref(), checks, screened)
            .await?;
        let check_ms = started.elapsed().as_millis() as u64;
        match self.apply(target, plan, existing, &commit_id, staged).await {
            Ok((version, merge)) => Ok(Committed {
                version,
                checks,
                check_ms,
                merge,
                commit_id,
            }),
            Err(error) => {
                // A failed commit may still have landed (an error after the log write), and
                // another writer may have committed in between: the log says which.
                let (uri, opts) = (&target.uri, self.storage_options);
                match find_commit(uri, opts, base_version, &commit_id).await {
                    Ok(Some(Landed::Ours(version))) => Ok(Committed {
                        version: Some(version),
                        checks,
                        check_ms,
                        merge: None,
                        commit_id,
                    }),
                    Ok(Some(Landed::Others)) => {
                        if !plan.merges() {
                            self.discard(target, staged).await;
                        }
                        Err(Rejected::Conflict(error))
                    }
                    // Unchanged, or unreadable: the files stay for VACUUM, in case they landed.
                    _ => Err(Rejected::Error(error)),
                }
            }
        }
    }

    /// The version the commit builds on: for bronze, the version its ledger was read at (see
    /// `CommitPlan::Append`); otherwise the latest.
    async fn base(&self, target: &Target, plan: &CommitPlan) -> Result<Option<DeltaTable>> {
        let (uri, opts) = (&target.uri, self.storage_options);
        let table = match plan {
            CommitPlan::Append {
                ledger_version: Some(v),
                ..
            } => Some(medallion_lake::open_version(uri, opts, *v).await?),
            CommitPlan::Append {
                ledger_version: None,
                ..
            } => None,
            _ => medallion_lake::open_table(uri, opts).await?,
        };
        match table {
            Some(t) if target.change_data_feed && !records_changes(&t)? => {
                Ok(Some(self.record_changes(target, t).await?))
            }
            t => Ok(t),
        }
    }

    /// Turns on the change data feed of an existing table, in a commit of its own that
    /// changes no rows (and the protocol version it needs); the data commit follows.
    async fn record_changes(&self, target: &Target, t: DeltaTable) -> Result<DeltaTable> {
        let info = vec![
            ("medallion.run_id".to_string(), self.run_id.into()),
            (
                "medallion.table".to_string(),
                target.table.to_string().into(),
            ),
        ];
        t.set_tbl_properties()
            .with_properties(HashMap::from([(CHANGE_DATA_FEED.into(), "true".into())]))
            .with_commit_properties(CommitProperties::default().with_metadata(info))
            .await
            .with_context(|| format!("turning on the change data feed of {}", target.table))
    }

    /// Runs the table's checks on the staged rows and adds what screening found; a failed
    /// `fail` check rejects the commit and discards the staged files.
    async fn judge(
        &self,
        target: &Target,
        plan: &CommitPlan,
        staged: &Staged,
        existing: Option<&DeltaTable>,
        checks: &[CheckSpec],
        screened: &TaskMetrics,
    ) -> Result<Vec<CheckResult>, Rejected> {
        let (screening, judged): (Vec<_>, Vec<_>) = checks
            .iter()
            .cloned()
            .partition(|c| c.action().screens_rows());
        let mut results = match self.check(target, staged, plan, existing, &judged).await {
            Ok(r) => r,
            Err(e) => {
                self.discard(target, staged).await;
                return Err(Rejected::Error(e));
            }
        };
        results.extend(quality::screened_results(&screening, screened));
        if results
            .iter()
            .any(|r| !r.passed && r.action == spec::Action::Fail)
        {
            self.discard(target, staged).await;
            return Err(Rejected::Checks(results));
        }
        Ok(results)
    }

    /// Makes the commit the plan says; returns the new version and what a merge changed.
    async fn apply(
        &self,
        target: &Target,
        plan: &CommitPlan,
        existing: Option<DeltaTable>,
        commit_id: &str,
        staged: &Staged,
    ) -> Result<(Option<u64>, Option<Metrics>)> {
        match (plan.merges(), existing) {
            (true, Some(t)) => {
                let r = self.merge(target, t, plan, commit_id, staged).await;
                // The merge wrote its own files into the table; the staged ones are done.
                self.discard(target, staged).await;
                r
            }
            (true, None) => Err(anyhow::anyhow!(
                "{} disappeared while the run merged into it",
                target.table
            )),
            (_, None) => self
                .create(target, plan, commit_id, staged)
                .await
                .map(|v| (Some(v), None)),
            (_, Some(t)) => self
                .write(target, t, plan, commit_id, staged)
                .await
                .map(|v| (Some(v), None)),
        }
    }

    /// Registers the tables `foreign_key` checks reference, at their latest version (they are
    /// dependencies, so this run has already written them).
    async fn register_references(&self, ctx: &SessionContext, checks: &[CheckSpec]) -> Result<()> {
        for check in checks.iter().filter(|c| c.check == CheckKind::ForeignKey) {
            let (table, _) = check.reference().map_err(anyhow::Error::msg)?;
            let view = quality::reference_view(&table);
            if ctx.table_exist(view.as_str())? {
                continue;
            }
            let uri = self.pipeline.table_uri(&table);
            match medallion_lake::open_table(&uri, self.storage_options).await? {
                Some(t) => medallion_lake::register_delta(ctx, &view, &t).await?,
                None => anyhow::bail!("check '{}': {table} does not exist yet", check.name.value),
            }
        }
        Ok(())
    }

    /// The table as it will be after the commit, checked.
    async fn check(
        &self,
        target: &Target,
        staged: &Staged,
        plan: &CommitPlan,
        existing: Option<&DeltaTable>,
        checks: &[CheckSpec],
    ) -> Result<Vec<CheckResult>> {
        if checks.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = self.session();
        self.register_references(&ctx, checks).await?;
        let new_rows = self.staged_rows(&ctx, target, staged)?;
        let next = match (plan, existing) {
            (
                CommitPlan::Merge {
                    keys,
                    latest,
                    replace,
                    ..
                },
                Some(t),
            ) => {
                medallion_lake::register_delta(&ctx, "__medallion_target", t).await?;
                let target = ctx.table("__medallion_target").await?;
                if *replace {
                    replaced_rows(target, new_rows, keys)?
                } else {
                    merged_rows(target, new_rows, keys, latest.as_deref())?
                }
            }
            (CommitPlan::Insert { .. }, Some(t)) => {
                medallion_lake::register_delta(&ctx, "__medallion_target", t).await?;
                let target = ctx.table("__medallion_target").await?;
                target.select(columns_of(&new_rows))?.union(new_rows)?
            }
            // Bronze checks look at the batch being appended.
            _ => new_rows,
        };
        quality::run_checks(&ctx, next, checks).await
    }

    fn staged_rows(
        &self,
        ctx: &SessionContext,
        target: &Target,
        staged: &Staged,
    ) -> Result<DataFrame> {
        let files = StagedFiles::new(
            &target.staged_uri,
            &staged.schema,
            &target.partition_columns,
            staged.adds.clone(),
        )?;
        files.register_store(ctx, self.storage_options)?;
        Ok(ctx.read_table(Arc::new(files))?)
    }

    fn properties(
        &self,
        table: &TableRef,
        plan: &CommitPlan,
        commit_id: &str,
        app_version: i64,
        staged: &Staged,
    ) -> CommitProperties {
        let mut info = vec![
            (
                "medallion.pipeline".to_string(),
                self.pipeline.name().into(),
            ),
            ("medallion.run_id".to_string(), self.run_id.into()),
            ("medallion.table".to_string(), table.to_string().into()),
            (INFO_COMMIT_ID.to_string(), commit_id.into()),
        ];
        if staged.quarantine.is_some() {
            info.push((INFO_QUARANTINED.to_string(), true.into()));
        }
        match (plan, plan.inputs()) {
            (_, Some(inputs)) => {
                info.push((INFO_INPUTS.to_string(), inputs_info(inputs)));
                let fingerprint = spec_fingerprint(self.pipeline);
                info.push((INFO_SPEC.to_string(), fingerprint.into()));
            }
            (
                CommitPlan::Append {
                    files, position, ..
                },
                None,
            ) => {
                if !files.is_empty() {
                    info.push(("medallion.source_files".to_string(), files.clone().into()));
                }
                if let Some(position) = position {
                    info.push((INFO_POSITION.to_string(), position.clone()));
                }
            }
            (
                CommitPlan::Replace {
                    position: Some(position),
                },
                None,
            ) => {
                info.push((INFO_POSITION.to_string(), position.clone()));
            }
            (_, None) => {}
        }
        CommitProperties::default()
            .with_metadata(info)
            .with_application_transaction(Transaction::new(app_id(table), app_version))
    }

    /// Creates the table with the staged files as its first version.
    async fn create(
        &self,
        target: &Target,
        plan: &CommitPlan,
        commit_id: &str,
        staged: &Staged,
    ) -> Result<u64> {
        let table = &target.table;
        let schema = medallion_lake::delta_struct(&staged.schema)?;
        let created = CreateBuilder::new()
            .with_location(medallion_lake::table_url(&target.uri)?.to_string())
            .with_storage_options(self.storage_options.clone())
            .with_table_name(&table.name)
            .with_columns(schema.fields().cloned())
            .with_partition_columns(target.partition_columns.clone())
            .with_configuration_property(
                TableProperty::EnableChangeDataFeed,
                target.change_data_feed.then_some("true"),
            )
            .with_actions(staged.adds.iter().cloned().map(Action::Add))
            // Not retried on top of a table another writer created meanwhile: that would add
            // these rows to theirs. The conflict makes the run plan the table again.
            .with_commit_properties(
                self.properties(table, plan, commit_id, 1, staged)
                    .with_max_retries(0),
            )
            .await
            .with_context(|| format!("creating {table}"))?;
        created.version().context("created table has no version")
    }

    /// Appends or overwrites with the staged files in one commit.
    async fn write(
        &self,
        target: &Target,
        t: DeltaTable,
        plan: &CommitPlan,
        commit_id: &str,
        staged: &Staged,
    ) -> Result<u64> {
        let table = &target.table;
        let app_version = next_app_version(&t, table).await?;
        let snapshot = t.snapshot()?;
        let mut actions: Vec<Action> = Vec::new();
        let mode = match plan {
            CommitPlan::Append { .. } | CommitPlan::Insert { .. } => SaveMode::Append,
            _ => {
                let current: Vec<_> = snapshot
                    .snapshot()
                    .file_views(t.log_store().as_ref(), None)
                    .try_collect()
                    .await?;
                actions.extend(
                    current
                        .iter()
                        .map(|f| Action::Remove(f.remove_action(true))),
                );
                let schema = medallion_lake::delta_struct(&staged.schema)?;
                if &schema != snapshot.schema().as_ref() {
                    actions.push(Action::Metadata(
                        snapshot.metadata().clone().with_schema(&schema)?,
                    ));
                }
                SaveMode::Overwrite
            }
        };
        let columns = snapshot.snapshot().arrow_schema();
        if let (SaveMode::Append, Some(bad)) = (mode, schema_drift(&columns, &staged.schema)) {
            if !(matches!(plan, CommitPlan::Append { .. })
                && evolves_columns(&columns, &staged.schema))
            {
                bail!("{table}: new data does not match the table's columns: {bad}");
            }
            // Bronze schema evolution: the new columns come in the commit of the rows that
            // bring them; files written before read NULL in them.
            let schema = medallion_lake::delta_struct(&staged.schema)?;
            let metadata = snapshot.metadata().clone().with_schema(&schema)?;
            actions.push(Action::Metadata(metadata));
            if widens_columns(&columns, &staged.schema) {
                actions.extend(self.rewrite_widened(target, &t, commit_id, staged).await?);
            }
        }
        actions.extend(staged.adds.iter().cloned().map(Action::Add));
        let operation = DeltaOperation::Write {
            mode,
            partition_by: (!target.partition_columns.is_empty())
                .then(|| target.partition_columns.clone()),
            predicate: None,
        };
        let done =
            CommitBuilder::from(self.properties(table, plan, commit_id, app_version, staged))
                .with_actions(actions)
                .build(Some(snapshot), t.log_store(), operation)
                .await
                .with_context(|| format!("committing {table}"))?;
        Ok(done.version())
    }

    /// The table's files rewritten with the staged rows' wider column types, as actions that
    /// replace them (no data change: the values stay the same).
    ///
    /// Delta's own type widening (the `typeWidening` table feature) would keep the files, but
    /// delta-rs cannot read tables that use it; a rewrite keeps every reader able to.
    async fn rewrite_widened(
        &self,
        target: &Target,
        t: &DeltaTable,
        commit_id: &str,
        staged: &Staged,
    ) -> Result<Vec<Action>> {
        let ctx = self.session();
        medallion_lake::register_delta(&ctx, "__medallion_widened", t).await?;
        let old = ctx.table("__medallion_widened").await?;
        let columns: Vec<Expr> = staged
            .schema
            .fields()
            .iter()
            .map(|f| {
                let value = match old.schema().has_column_with_unqualified_name(f.name()) {
                    true => col(Column::from_name(f.name())),
                    // A column new in this commit: NULL in the rows before.
                    false => lit(datafusion::common::ScalarValue::Null),
                };
                datafusion::logical_expr::cast(value, f.data_type().clone()).alias(f.name())
            })
            .collect();
        let rows = old.select(columns)?.execute_stream().await?;
        let written = medallion_lake::write_data_files(
            &target.uri,
            &format!("widened-{commit_id}"),
            self.storage_options,
            staged.schema.clone(),
            &target.partition_columns,
            rows.map_err(anyhow::Error::from),
        )
        .await
        .with_context(|| format!("rewriting {} with wider column types", target.table))?;
        let current: Vec<_> = t
            .snapshot()?
            .snapshot()
            .file_views(t.log_store().as_ref(), None)
            .try_collect()
            .await?;
        let removes = current
            .iter()
            .map(|f| Action::Remove(f.remove_action(false)));
        let adds = written.adds.into_iter().map(|mut add| {
            add.data_change = false;
            Action::Add(add)
        });
        Ok(removes.chain(adds).collect())
    }

    /// Upserts the staged rows into the table on `keys` ([`merge::Merge`]); or, for bronze
    /// files ingested again (`on_change: reingest`), replaces every row of each file the
    /// staged rows came from with them, on the version the ledger was read at.
    async fn merge(
        &self,
        target: &Target,
        t: DeltaTable,
        plan: &CommitPlan,
        commit_id: &str,
        staged: &Staged,
    ) -> Result<(Option<u64>, Option<Metrics>)> {
        let table = &target.table;
        let ctx = self.session();
        let rows = self.staged_rows(&ctx, target, staged)?;
        let (source, keys, latest, replace) = match plan {
            CommitPlan::Merge {
                keys,
                latest,
                replace,
                ..
            } => (rows, keys.clone(), latest.clone(), *replace),
            CommitPlan::Append { .. } => {
                let table_columns = t.snapshot()?.snapshot().arrow_schema();
                if let Some(drift) = schema_drift(&table_columns, &staged.schema) {
                    bail!(
                        "{table}: changed files cannot be ingested again with other columns \
                         than the table's ({drift}); use rerun --full-refresh {table}"
                    );
                }
                let rows = rows.with_column(spec::TOUCHED_KEY, lit(false))?;
                (rows, vec![meta::SOURCE_FILE.to_string()], None, true)
            }
            _ => bail!("{table}: merging needs a merge plan"),
        };
        let app_version = next_app_version(&t, table).await?;
        let (version, m) = merge::Merge::new(t.clone(), &ctx, source, keys)
            .with_latest(latest)
            .with_replace(replace)
            .with_storage_options(self.storage_options)
            .with_subdir(format!("merge-{commit_id}"))
            .with_commit_properties(self.properties(table, plan, commit_id, app_version, staged))
            .execute()
            .await
            .with_context(|| format!("merging into {table}"))?;
        let version = match (version, plan.inputs()) {
            (Some(v), _) => Some(v),
            // No row changed, yet the table has read these inputs: a commit without rows
            // records them, so the next run does not read the same rows again.
            (None, Some(inputs)) => {
                let nothing = Staged {
                    adds: Vec::new(),
                    // The staged rows may carry columns the table has not (`TOUCHED_KEY`).
                    schema: t.snapshot()?.snapshot().arrow_schema(),
                    ..staged.clone()
                };
                let record = CommitPlan::Insert {
                    inputs: inputs.clone(),
                };
                Some(self.write(target, t, &record, commit_id, &nothing).await?)
            }
            (None, None) => None,
        };
        let metrics = Metrics {
            rows_updated: m.rows_updated,
            rows_inserted: m.rows_inserted,
            rows_deleted: m.rows_deleted,
            files_rewritten: m.files_rewritten,
            ..Default::default()
        };
        tracing::info!(
            table = %table, inserted = m.rows_inserted, updated = m.rows_updated,
            deleted = m.rows_deleted,
            files = m.files_total, files_read = m.files_read, files_rewritten = m.files_rewritten,
            "merged"
        );
        Ok((version, Some(metrics)))
    }

    /// Deletes the directories of the table's `dispatched` but those in `keep`, in the
    /// target and its quarantine table: the files of a dispatch the run gave up on that
    /// still finished (an executor declared lost while it was only slow writes on until it
    /// hears). Called once the table's outcome is known, with the directories of the files
    /// its commit took.
    ///
    /// Only directories this run named for this table: any other is another run's or
    /// another leader's, whose files may be committed.
    pub async fn sweep(&self, target: &Target, dispatched: &[String], keep: &HashSet<String>) {
        let uris = std::iter::once(target).chain(target.quarantine.as_deref());
        let uris: Vec<&str> = uris.map(|t| t.staged_uri.as_str()).collect();
        for dir in dispatched.iter().filter(|d| !keep.contains(*d)) {
            let opts = self.storage_options;
            if let Err(e) = medallion_lake::delete_dirs(&uris, dir, opts).await {
                tracing::warn!(
                    dir,
                    error = format!("{e:#}"),
                    "could not delete what a given-up dispatch wrote"
                );
            }
        }
    }

    /// Deletes staged files that will not be committed (best effort: they are invisible to
    /// readers either way, and `VACUUM` would remove them too).
    pub async fn discard(&self, target: &Target, staged: &Staged) {
        let uri = &target.staged_uri;
        let result: Result<()> = async {
            let handle = medallion_lake::table_handle(uri, self.storage_options)?;
            let store = handle.log_store().object_store(None);
            for add in &staged.adds {
                let path = deltalake::Path::from_url_path(&add.path)?;
                store.delete(&path).await.or_else(ignore_missing)?;
            }
            // A local staging directory is the run's own; remove what the files leave behind.
            if target.is_staged_apart() && !uri.contains("://") {
                let _ = std::fs::remove_dir_all(uri);
                // `<staging>/<run>/<layer>/`, then `<staging>/<run>/`, once empty.
                for dir in std::path::Path::new(uri).ancestors().skip(1).take(2) {
                    if std::fs::remove_dir(dir).is_err() {
                        break;
                    }
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(uri, error = %e, "could not delete staged files");
        }
    }
}

fn ignore_missing(
    e: deltalake::ObjectStoreError,
) -> std::result::Result<(), deltalake::ObjectStoreError> {
    match e {
        deltalake::ObjectStoreError::NotFound { .. } => Ok(()),
        e => Err(e),
    }
}

/// Describes a difference between the table's columns and the staged files' columns.
fn schema_drift(table: &SchemaRef, staged: &SchemaRef) -> Option<String> {
    let names = |s: &SchemaRef| {
        s.fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
    };
    let (a, b) = (names(table), names(staged));
    (a != b).then(|| {
        format!(
            "table has [{}], new files have [{}]",
            a.join(", "),
            b.join(", ")
        )
    })
}

/// Whether `staged` is `table` evolved: every column of the table, of the same type or a
/// wider one, and nothing else but columns that may be NULL.
fn evolves_columns(table: &SchemaRef, staged: &SchemaRef) -> bool {
    let kept = table.fields().iter().all(|f| {
        staged.field_with_name(f.name()).is_ok_and(|s| {
            s.data_type() == f.data_type() || medallion_lake::widens(f.data_type(), s.data_type())
        })
    });
    let added = staged
        .fields()
        .iter()
        .filter(|f| table.field_with_name(f.name()).is_err());
    kept && added.into_iter().all(|f| f.is_nullable())
}

/// Whether a column of `table` has a wider type in `staged`.
fn widens_columns(table: &SchemaRef, staged: &SchemaRef) -> bool {
    table.fields().iter().any(|f| {
        staged
            .field_with_name(f.name())
            .is_ok_and(|s| medallion_lake::widens(f.data_type(), s.data_type()))
    })
}

/// The number the next commit of `table` gets under its Delta application id; two runs that
/// race to commit the same table thus conflict instead of both landing.
async fn next_app_version(t: &DeltaTable, table: &TableRef) -> Result<i64> {
    let last = t
        .snapshot()?
        .transaction_version(t.log_store().as_ref(), app_id(table))
        .await?;
    Ok(last.unwrap_or(0) + 1)
}

/// What the log holds past the version a failed commit was built on.
enum Landed {
    /// The commit did land, as this version.
    Ours(u64),
    /// Other writers' commits only.
    Others,
}

/// Looks for the commit `commit_id` among the versions after `base` (`None`: the table did not
/// exist); `None` when the table has no version past `base`.
async fn find_commit(
    uri: &str,
    options: &HashMap<String, String>,
    base: Option<u64>,
    commit_id: &str,
) -> Result<Option<Landed>> {
    let Some(table) = medallion_lake::open_table(uri, options).await? else {
        return Ok(None);
    };
    let latest = table.version().context("table has no version")?;
    let newer = match base {
        Some(b) if latest <= b => return Ok(None),
        Some(b) => latest - b,
        None => latest + 1,
    };
    let history: Vec<_> = table.history(Some(newer as usize)).try_collect().await?;
    // Newest first: entry `i` is version `latest - i`.
    let ours = history
        .iter()
        .position(|c| c.info.get(INFO_COMMIT_ID) == Some(&serde_json::json!(commit_id)));
    Ok(Some(match ours {
        Some(i) => Landed::Ours(latest - i as u64),
        None => Landed::Others,
    }))
}

/// The id of the quarantine table's commit that goes with the table's commit `commit_id`.
pub fn quarantine_commit_id(commit_id: &str) -> String {
    format!("{commit_id}{}", medallion_pipeline::QUARANTINE_SUFFIX)
}

/// The Delta application id under which a table's commits are numbered.
fn app_id(table: &TableRef) -> String {
    format!("medallion:{table}")
}

/// Whether a new row may replace a stored one by their `latest_by` values: as a full
/// recompute orders rows (latest first, NULL last), with ties going to the newer row.
fn not_older(new: Expr, old: Expr) -> Expr {
    let both_null = new.clone().is_null().and(old.clone().is_null());
    let later = new
        .clone()
        .is_not_null()
        .and(old.clone().is_null().or(new.gt_eq(old)));
    both_null.or(later)
}

/// Every column of `rows`, unqualified, to line another frame's columns up with them.
fn columns_of(rows: &DataFrame) -> Vec<Expr> {
    rows.schema()
        .fields()
        .iter()
        .map(|f| col(Column::new_unqualified(f.name())))
        .collect()
}

/// The table as replacing the rows of the keys `new` names leaves it: the stored rows of
/// other keys, and the rows of `new` that are rows, not only a key ([`spec::TOUCHED_KEY`]).
fn replaced_rows(target: DataFrame, new: DataFrame, keys: &[String]) -> Result<DataFrame> {
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let rows = new
        .clone()
        .filter(datafusion::prelude::not(col(spec::TOUCHED_KEY)))?
        .select(columns_of(&target))?;
    let kept = target.join(new, JoinType::LeftAnti, &key_refs, &key_refs, None)?;
    Ok(kept.union(rows)?)
}

/// The table as a merge of `new` into `target` on `keys` leaves it: the new rows that win
/// (all of them, or with `latest`, those not older than the stored row with their key),
/// and the stored rows no winner replaces.
fn merged_rows(
    target: DataFrame,
    new: DataFrame,
    keys: &[String],
    latest: Option<&str>,
) -> Result<DataFrame> {
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let winners = match latest {
        None => new,
        Some(latest) => {
            let stored_columns: Vec<Expr> = keys
                .iter()
                .chain([&latest.to_string()])
                .enumerate()
                .map(|(i, c)| col(Column::new_unqualified(c)).alias(format!("__stored_{i}")))
                .collect();
            let stored = target.clone().select(stored_columns)?;
            let stored_keys: Vec<String> =
                (0..keys.len()).map(|i| format!("__stored_{i}")).collect();
            let stored_refs: Vec<&str> = stored_keys.iter().map(String::as_str).collect();
            let stored_latest = col(format!("__stored_{}", keys.len()));
            let columns = columns_of(&new);
            new.join(stored, JoinType::Left, &key_refs, &stored_refs, None)?
                .filter(
                    col(Column::new_unqualified(stored_keys[0].as_str()))
                        .is_null()
                        .or(not_older(
                            col(Column::new_unqualified(latest)),
                            stored_latest,
                        )),
                )?
                .select(columns)?
        }
    };
    let kept = target.join(
        winners.clone(),
        JoinType::LeftAnti,
        &key_refs,
        &key_refs,
        None,
    )?;
    Ok(kept.select(columns_of(&winners))?.union(winners)?)
}
