//! Quality checks, evaluated on a table's next version before it is committed.
//!
//! Row checks (`not_null`, `range`, `expression`) are counted together in one scan; each
//! `unique` check groups the rows once.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
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

    // One scan: the row count, then a failing-row count per row check.
    let mut sums = vec!["count(*)".to_string()];
    sums.extend(
        checks
            .iter()
            .filter_map(failing_row)
            .map(|condition| format!("coalesce(sum(CASE WHEN {condition} THEN 1 ELSE 0 END), 0)")),
    );
    let scanned = counts(ctx, &format!("SELECT {} FROM {VIEW}", sums.join(", ")))
        .await
        .map_err(|e| anyhow::anyhow!("quality checks: {e:#}"))?;
    let (total_rows, mut row_counts) = (scanned[0], scanned[1..].iter());

    let mut results = Vec::with_capacity(checks.len());
    for check in checks {
        let failing_rows = match failing_row(check) {
            Some(_) => *row_counts.next().expect("one count per row check"),
            None => counts(ctx, &duplicates_sql(check))
                .await
                .map_err(|e| anyhow::anyhow!("check '{}': {e:#}", check.name.value))?[0],
        };
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

fn columns(check: &CheckSpec) -> Vec<String> {
    check
        .all_columns()
        .iter()
        .map(|c| quote_ident(&c.value))
        .collect()
}

/// The SQL condition a row breaking `check` meets; `None` for `unique`, which is about
/// groups of rows.
fn failing_row(check: &CheckSpec) -> Option<String> {
    let cols = columns(check);
    let condition = match check.check {
        CheckKind::NotNull => cols
            .iter()
            .map(|c| format!("{c} IS NULL"))
            .collect::<Vec<_>>()
            .join(" OR "),
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
            outside.join(" OR ")
        }
        CheckKind::Expression => {
            let expr = check.expr.as_ref().map_or("true", |e| e.value.as_str());
            format!("NOT coalesce(({expr}), false)")
        }
        CheckKind::Unique => return None,
    };
    Some(format!("({condition})"))
}

/// Rows beyond the first of each value of the check's columns.
fn duplicates_sql(check: &CheckSpec) -> String {
    let list = columns(check).join(", ");
    format!(
        "SELECT coalesce(sum(n - 1), 0) FROM \
         (SELECT count(*) AS n FROM {VIEW} GROUP BY {list} HAVING count(*) > 1)"
    )
}

fn literal(bound: &Bound) -> String {
    match bound {
        Bound::Number(n) => n.to_string(),
        Bound::Text(t) => quote_literal(t),
    }
}

/// The values of the single row `sql` returns, as counts.
async fn counts(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<u64>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let batch = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| anyhow::anyhow!("no result from `{sql}`"))?;
    batch
        .columns()
        .iter()
        .map(|c| {
            let c = datafusion::arrow::compute::cast(c, &DataType::Int64)?;
            let a = c.as_primitive::<Int64Type>();
            Ok(if a.is_null(0) { 0 } else { a.value(0) as u64 })
        })
        .collect()
}
