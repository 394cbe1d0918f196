//! Read-only SQL over a pipeline's tables, for `medallion sql` and the Flight SQL endpoint.
//!
//! Tables are named as in gold queries (`gold.customer_360`). Each is read at its latest
//! version, at the version a snapshot of a run gives it ([`Snapshot`]), or at the version or
//! time the query asks for with Databricks' time travel syntax:
//!
//! ```sql
//! SELECT * FROM silver.orders VERSION AS OF 3
//! SELECT * FROM gold.customer_360 TIMESTAMP AS OF '2026-12-01 10:00:00'
//! ```
//!
//! DataFusion's planner ignores a table's version clause, so the query is parsed here, each
//! versioned table is registered under a name of its own (`silver."orders@1"`) and the query
//! is rewritten to read it. Only one `SELECT` (or `WITH`) query is accepted.
//!
//! ```no_run
//! # async fn f(pipeline: &medallion_pipeline::Pipeline) -> anyhow::Result<()> {
//! let query = medallion_coordinator::sql::query(pipeline, "SELECT count(*) FROM gold.customer_360", None).await?;
//! let batches = query.frame.collect().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use datafusion::catalog::MemorySchemaProvider;
use datafusion::common::TableReference;
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{
    self, Expr, Ident, ObjectName, TableFactor, TableVersion, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::DatabricksDialect;
use medallion_lake::StorageOptions;
use medallion_pipeline::{Layer, Pipeline, TableRef};

use crate::snapshots::Snapshot;

/// A planned query.
pub struct Query {
    pub frame: DataFrame,
    /// The version each table read without a version clause was read at: planning the query
    /// again with these as its snapshot reads the same rows whatever was committed since.
    pub versions: BTreeMap<TableRef, u64>,
}

/// Plans `sql` over the tables of `pipeline`, each at the version `snapshot` gives it (when
/// given) or its latest; a `VERSION AS OF` / `TIMESTAMP AS OF` clause overrides both.
pub async fn query(pipeline: &Pipeline, sql: &str, snapshot: Option<&Snapshot>) -> Result<Query> {
    let mut statements = DFParser::parse_sql_with_dialect(sql, &DatabricksDialect {})
        .map_err(|e| anyhow!("invalid SQL: {e}"))?;
    let mut query = match (statements.pop_front(), statements.is_empty()) {
        (Some(Statement::Statement(statement)), true)
            if matches!(*statement, ast::Statement::Query(_)) =>
        {
            statement
        }
        _ => bail!("give one SELECT query: the tables are read-only here"),
    };
    let mut reads = Reads::new(pipeline);
    if let ControlFlow::Break(e) = query.visit(&mut reads) {
        return Err(e);
    }
    let ctx = SessionContext::new();
    let catalog = ctx
        .catalog("datafusion")
        .context("DataFusion's default catalog")?;
    for layer in [Layer::Bronze, Layer::Silver, Layer::Gold] {
        catalog.register_schema(&layer.to_string(), Arc::new(MemorySchemaProvider::new()))?;
    }
    let opts: StorageOptions = pipeline.lake_options();
    let mut versions = BTreeMap::new();
    for (name, read) in &reads.tables {
        let uri = pipeline.table_uri(&read.table);
        let at = match read.at {
            At::Latest => snapshot.and_then(|s| s.versions.get(&read.table).copied()),
            At::Version(v) => Some(v),
            At::Time(t) => Some(version_at(&uri, &opts, &read.table, t).await?),
        };
        let table = match at {
            Some(v) => medallion_lake::open_version(&uri, &opts, v)
                .await
                .with_context(|| format!("{} has no version {v}", read.table))?,
            None => medallion_lake::open_table(&uri, &opts)
                .await?
                .with_context(|| format!("{} has no version yet: run the pipeline", read.table))?,
        };
        if read.at == At::Latest
            && let Some(v) = table.version()
        {
            versions.insert(read.table.clone(), v);
        }
        let reference = TableReference::partial(read.table.layer.to_string(), name.as_str());
        medallion_lake::register_delta(&ctx, reference, &table).await?;
    }
    let plan = ctx
        .state()
        .statement_to_plan(Statement::Statement(query))
        .await?;
    Ok(Query {
        frame: ctx.execute_logical_plan(plan).await?,
        versions,
    })
}

/// The latest version of a table committed at or before `time`.
async fn version_at(
    uri: &str,
    opts: &StorageOptions,
    table: &TableRef,
    time: chrono::DateTime<chrono::Utc>,
) -> Result<u64> {
    let mut t = medallion_lake::table_handle(uri, opts)?;
    t.load_with_datetime(time)
        .await
        .with_context(|| format!("{table} has no version as of {time}"))?;
    let version = t
        .version()
        .with_context(|| format!("{table} has no version as of {time}"))?;
    // delta-rs gives the first version for a time before it.
    if version == 0
        && let Some(created) = created_at(&t).await?
        && created > time.timestamp_millis()
    {
        let created = chrono::DateTime::from_timestamp_millis(created).unwrap_or_default();
        bail!("{table} did not exist yet at {time}: its first version is of {created}");
    }
    Ok(version)
}

/// When version 0 of a table was committed (milliseconds since the epoch).
async fn created_at(t: &deltalake::DeltaTable) -> Result<Option<i64>> {
    let Some(bytes) = t.log_store().read_commit_entry(0).await? else {
        return Ok(None);
    };
    Ok(deltalake::logstore::get_actions(0, &bytes)?
        .into_iter()
        .find_map(|a| match a {
            deltalake::kernel::Action::CommitInfo(c) => c.timestamp,
            _ => None,
        }))
}

/// Which version of a table a query reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    Latest,
    Version(u64),
    Time(chrono::DateTime<chrono::Utc>),
}

struct Read {
    table: TableRef,
    at: At,
}

/// The pipeline's tables a query reads, each under the name it is registered as; rewrites
/// time-travelled ones to their own name and drops their version clause.
struct Reads<'a> {
    pipeline: &'a Pipeline,
    tables: HashMap<String, Read>,
}

impl<'a> Reads<'a> {
    fn new(pipeline: &'a Pipeline) -> Self {
        Self {
            pipeline,
            tables: HashMap::new(),
        }
    }

    /// The pipeline's table a name (`gold.customer_360`, or `<pipeline>.gold.customer_360`)
    /// names, if any.
    fn table_of(&self, name: &ObjectName) -> Option<TableRef> {
        let parts: Vec<&str> = name
            .0
            .iter()
            .map(|p| p.as_ident().map(|i| i.value.as_str()))
            .collect::<Option<_>>()?;
        let (layer, table) = match parts[..] {
            [layer, table] => (layer, table),
            [pipeline, layer, table] if pipeline == self.pipeline.name() => (layer, table),
            _ => return None,
        };
        let table: TableRef = format!("{layer}.{table}").parse().ok()?;
        self.pipeline.dag.contains(&table).then_some(table)
    }
}

impl VisitorMut for Reads<'_> {
    type Break = anyhow::Error;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Self::Break> {
        let TableFactor::Table { name, version, .. } = factor else {
            return ControlFlow::Continue(());
        };
        let Some(table) = self.table_of(name) else {
            return ControlFlow::Continue(());
        };
        let at = match version.take() {
            None => At::Latest,
            Some(v) => match at_of(&table, v) {
                Ok(at) => at,
                Err(e) => return ControlFlow::Break(e),
            },
        };
        let registered = match at {
            At::Latest => table.name.clone(),
            At::Version(v) => format!("{}@{v}", table.name),
            At::Time(t) => format!("{}@{}", table.name, t.timestamp_micros()),
        };
        *name = ObjectName::from(vec![
            Ident::new(table.layer.to_string()),
            Ident::with_quote('"', registered.clone()),
        ]);
        self.tables.insert(registered, Read { table, at });
        ControlFlow::Continue(())
    }
}

/// A table's version clause: `VERSION AS OF <n>` or `TIMESTAMP AS OF '<time>'`.
fn at_of(table: &TableRef, version: TableVersion) -> Result<At> {
    let literal = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(n.clone()),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        Expr::TypedString(t) => t.value.value.clone().into_string(),
        _ => None,
    };
    match &version {
        TableVersion::VersionAsOf(e) => literal(e)
            .and_then(|n| n.parse().ok())
            .map(At::Version)
            .with_context(|| format!("{table}: VERSION AS OF takes a version number, not {e}")),
        TableVersion::TimestampAsOf(e) | TableVersion::ForSystemTimeAsOf(e) => literal(e)
            .and_then(|s| parse_time(&s))
            .map(At::Time)
            .with_context(|| {
                format!("{table}: TIMESTAMP AS OF takes a time such as '2026-12-01 10:00:00' (UTC) or RFC 3339, not {e}")
            }),
        other => bail!("{table}: {other} is not supported: use VERSION AS OF or TIMESTAMP AS OF"),
    }
}

/// `2026-12-01T10:00:00Z`, `2026-12-01 10:00:00` (UTC) or `2026-12-01` (midnight UTC).
fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.to_utc());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_as_people_write_them() {
        let noon = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap();
        for text in [
            "2026-12-01T12:00:00Z",
            "2026-12-01T13:00:00+01:00",
            "2026-12-01 12:00:00",
            "2026-12-01T12:00:00.000",
        ] {
            assert_eq!(parse_time(text), Some(noon.to_utc()), "{text}");
        }
        assert!(parse_time("2026-12-01").is_some());
        assert!(parse_time("yesterday").is_none());
    }
}
