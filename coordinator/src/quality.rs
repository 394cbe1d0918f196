//! Quality checks, evaluated on a table's next version before it is committed.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{DataFrame, SessionContext};
use medallion_pipeline::spec::{Bound, CheckKind, CheckSpec};
use medallion_pipeline::sql::{quote_ident, quote_literal};

use crate::report::CheckResult;

const VIEW: &str = "__medallion_next_version";

/// Runs every check on `rows` (the table as it will be after the commit), in `ctx`, the
/// session `rows` was made in (it knows the object stores).
pub async fn run_checks(
    ctx: &SessionContext,
    rows: DataFrame,
    checks: &[CheckSpec],
) -> anyhow::Result<Vec<CheckResult>> {
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    ctx.register_table(VIEW, rows.into_view())?;
    let total_rows = count(ctx, &format!("SELECT count(*) FROM {VIEW}")).await?;
    let mut results = Vec::with_capacity(checks.len());
    for check in checks {
        let failing_rows = count(ctx, &failing_rows_sql(check))
            .await
            .map_err(|e| anyhow::anyhow!("check '{}': {e:#}", check.name.value))?;
        results.push(CheckResult {
            name: check.name.value.clone(),
            check: check.check,
            severity: check.severity,
            passed: failing_rows == 0,
            failing_rows,
            total_rows,
        });
    }
    Ok(results)
}

/// A query returning the number of rows that break `check`.
fn failing_rows_sql(check: &CheckSpec) -> String {
    let cols: Vec<String> = check
        .all_columns()
        .iter()
        .map(|c| quote_ident(&c.value))
        .collect();
    match check.check {
        CheckKind::NotNull => {
            let any_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NULL")).collect();
            format!(
                "SELECT count(*) FROM {VIEW} WHERE {}",
                any_null.join(" OR ")
            )
        }
        CheckKind::Unique => {
            let list = cols.join(", ");
            format!(
                "SELECT coalesce(sum(n - 1), 0) FROM \
                 (SELECT count(*) AS n FROM {VIEW} GROUP BY {list} HAVING count(*) > 1)"
            )
        }
        CheckKind::Range => {
            let mut outside = Vec::new();
            for c in &cols {
                if let Some(min) = &check.min {
                    outside.push(format!("{c} < {}", literal(min)));
                }
                if let Some(max) = &check.max {
                    outside.push(format!("{c} > {}", literal(max)));
                }
            }
            format!("SELECT count(*) FROM {VIEW} WHERE {}", outside.join(" OR "))
        }
        CheckKind::Expression => {
            let expr = check
                .expr
                .as_ref()
                .map(|e| e.value.as_str())
                .unwrap_or("true");
            format!("SELECT count(*) FROM {VIEW} WHERE NOT coalesce(({expr}), false)")
        }
    }
}

fn literal(bound: &Bound) -> String {
    match bound {
        Bound::Number(n) => n.to_string(),
        Bound::Text(t) => quote_literal(t),
    }
}

async fn count(ctx: &SessionContext, sql: &str) -> anyhow::Result<u64> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let batch = batches.iter().find(|b| b.num_rows() > 0);
    let value = batch.map(|b| {
        let c = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Int64,
        )?;
        let a = c.as_primitive::<Int64Type>();
        Ok::<_, datafusion::arrow::error::ArrowError>(if a.is_null(0) { 0 } else { a.value(0) })
    });
    Ok(value.transpose()?.unwrap_or(0) as u64)
}
