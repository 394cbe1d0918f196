//! Whether a silver table can read only the input rows committed since it was last computed
//! (an incremental refresh), or must read them all, and why; and whether a gold table can
//! recompute only the groups its one changed input touched ([`medallion_pipeline::regroup`]).

use anyhow::Result;
use medallion_lake::changes::{Changes, changes, records_changes};
use medallion_lake::open_version;
use medallion_pipeline::regroup::{self, Regroup};
use medallion_pipeline::report::Refresh;
use medallion_pipeline::spec::{Action, GoldSpec, SilverSpec, WriteMode};
use medallion_pipeline::{Layer, TableRef};

use super::{Inputs, LastComputed, RunContext};

impl RunContext<'_> {
    /// An incremental refresh needs: the table exists, this run does not ask for a full one,
    /// its last commit was made with this spec from a recorded input version (with its
    /// quarantined rows landed), its `latest_by` is one of its columns, and every input commit
    /// since only appended rows.
    /// `last` is what the table's latest commit records ([`RunContext::last_computed`]).
    pub(super) async fn silver_refresh(
        &self,
        spec: &SilverSpec,
        last: Option<&LastComputed>,
        input: &TableRef,
        input_version: u64,
    ) -> Result<Refresh> {
        let full = |reason: &str| {
            Ok(Refresh::Full {
                reason: reason.to_string(),
            })
        };
        if self
            .rebuild
            .contains(&TableRef::new(Layer::Silver, &spec.name.value))
        {
            return full("rebuilt (rerun --full-refresh)");
        }
        if self.full_refresh {
            return full("asked for");
        }
        let Some(last) = last else {
            return full("the table is new");
        };
        if !last.same_spec(self.pipeline) {
            return full("the spec changed");
        }
        if spec.mode == WriteMode::Cdc && spec.apply_as_truncates.is_some() {
            return full(
                "a truncate empties every key, so a CDC table that applies them is recomputed",
            );
        }
        // A touched key's rows are recomputed and screened again: rows quarantined before
        // would be quarantined twice.
        if spec.mode == WriteMode::Cdc
            && spec
                .checks
                .iter()
                .any(|c| c.action == Some(Action::Quarantine))
        {
            return full(
                "a CDC table that quarantines rows is recomputed, so none is quarantined twice",
            );
        }
        let Some(after_version) = last.input_version(input) else {
            return full("its last commit does not say which input version it read");
        };
        if !last.complete {
            return full("the rows its last run quarantined did not land");
        }
        if spec.latest_by.is_some() && latest_column(spec).is_none() {
            return full("latest_by is not one of its columns, so stored rows cannot be compared");
        }
        let uri = self.pipeline.table_uri(input);
        Ok(
            match changes(&uri, &self.storage_options, after_version, input_version).await? {
                Changes::Appended(_) => Refresh::Incremental { after_version },
                Changes::Rewritten(why) => Refresh::Full {
                    reason: format!("{input} changed other than by appending: {why}"),
                },
            },
        )
    }
}

impl RunContext<'_> {
    /// A gold table recomputes only touched groups when: the table exists, this run does not
    /// ask for a full refresh, its last commit was made with this spec from recorded input
    /// versions, exactly one input changed since, that input records its changes (change data
    /// feed) and the query's groups follow one of its columns; and no check drops or
    /// quarantines rows (the quarantine would lose the untouched groups' rows).
    pub(super) async fn gold_refresh(
        &self,
        spec: &GoldSpec,
        last: Option<&LastComputed>,
        inputs: &Inputs,
        table_version: Option<u64>,
    ) -> Result<(Refresh, Option<Regroup>)> {
        let full = |reason: String| Ok((Refresh::Full { reason }, None));
        if self
            .rebuild
            .contains(&TableRef::new(Layer::Gold, &spec.name.value))
        {
            return full("rebuilt (rerun --full-refresh)".into());
        }
        if self.full_refresh {
            return full("asked for".into());
        }
        let (Some(last), Some(table_version)) = (last, table_version) else {
            return full("the table is new".into());
        };
        if !last.same_spec(self.pipeline) {
            return full("the spec changed".into());
        }
        if spec
            .checks
            .iter()
            .any(|c| c.action.is_some_and(Action::screens_rows))
        {
            return full("a check drops or quarantines rows".into());
        }
        let mut changed = Vec::new();
        for (input, version) in inputs {
            match last.input_version(input) {
                None => {
                    return full(format!(
                        "its last commit does not say which {input} it read"
                    ));
                }
                Some(v) if v != *version => changed.push((input, v, *version)),
                Some(_) => {}
            }
        }
        let [(input, after_version, version)] = changed.as_slice() else {
            return full("more than one of its inputs changed".into());
        };
        if version < after_version {
            return full(format!("{input} went back to an earlier version"));
        }
        let key = match regroup::group_key(&spec.sql.value, input) {
            Ok(key) => key,
            Err(why) => return full(why),
        };
        let uri = self.pipeline.table_uri(input);
        let read = open_version(&uri, &self.storage_options, *after_version).await?;
        if !records_changes(&read)? {
            return full(format!(
                "{input} does not record its changes (change_data_feed: true)"
            ));
        }
        let regroup = Regroup {
            input: (*input).clone(),
            after_version: *after_version,
            key,
            table_version,
        };
        let refresh = Refresh::Incremental {
            after_version: *after_version,
        };
        Ok((refresh, Some(regroup)))
    }
}

/// The column of a silver table that holds its `latest_by` value: the column computed by the
/// same expression (`latest_by: to_timestamp(updated_at)` and a column
/// `{ name: updated_at, expr: to_timestamp(updated_at) }`), or the input column `latest_by`
/// names when the table keeps it as it is (no expression, no type: a cast could order values
/// differently). An incremental merge compares stored rows with new ones by it.
pub(super) fn latest_column(spec: &SilverSpec) -> Option<String> {
    let latest = normalized(&spec.latest_by.as_ref()?.value);
    spec.columns
        .iter()
        .find(|c| match &c.expr {
            Some(e) => normalized(&e.value) == latest,
            None => c.data_type.is_none() && normalized(&c.name.value) == latest,
        })
        .map(|c| c.name.value.clone())
}

/// An expression with case, blanks and identifier quotes left out, for comparison.
fn normalized(sql: &str) -> String {
    sql.chars()
        .filter(|c| !c.is_whitespace() && *c != '"')
        .flat_map(char::to_lowercase)
        .collect()
}
