//! A change feed applied as a slowly changing dimension (`mode: cdc`).
//!
//! The changes of one key are ordered by their sequence value (then by ingestion time and
//! source file, for changes with equal sequences), never by arrival, so a late change lands at
//! its place. Both functions stream: each is a few window functions over one sort by key and
//! sequence, which spills within the task's memory pool.
//!
//! - Type 1 ([`latest`]) keeps each key's latest change, unless that change is a delete.
//! - Type 2 ([`versions`]) keeps a row per version of a key. A change opens a new version when
//!   the key has none open (its first change, or the first after a delete) or when a tracked
//!   column differs from the open version; otherwise it updates the open version in place.
//!   A version starts at the sequence of the change that opened it and ends at the sequence of
//!   the next change of its key (the one that opened the next version, or a delete); the
//!   current version's end is NULL.
//!
//! The tables are recomputed from the whole change feed, so their rows equal what applying
//! every change in sequence order gives, whatever order the changes arrived in.

use datafusion::common::Result;
use datafusion::functions_aggregate::min_max::max_udaf;
use datafusion::functions_window::expr_fn::{lag, lead, row_number};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    ExprFunctionExt, Operator, SortExpr, WindowFrame, WindowFrameBound, WindowFrameUnits,
    binary_expr, when,
};
use datafusion::prelude::{DataFrame, Expr, coalesce, col, lit, not};

const RANK: &str = "__medallion_cdc_rank";
const OPENS: &str = "__medallion_cdc_opens";
const PREVIOUS_DELETE: &str = "__medallion_cdc_previous_delete";
const NEXT_SEQUENCE: &str = "__medallion_cdc_next_sequence";
const NEXT_OPENS: &str = "__medallion_cdc_next_opens";

fn previous(i: usize) -> String {
    format!("__medallion_cdc_previous_{i}")
}

/// How a table's changes are told apart and ordered.
pub(crate) struct ChangeOrder {
    /// The key columns.
    pub keys: Vec<Expr>,
    /// The sequence, then the tie-breakers; ascending, NULL first (oldest).
    pub order: Vec<Expr>,
    /// The sequence alone.
    pub sequence: Expr,
    /// True for a change that deletes its key.
    pub delete: Expr,
}

impl ChangeOrder {
    fn sort(&self, ascending: bool) -> Vec<SortExpr> {
        self.order
            .iter()
            .map(|e| e.clone().sort(ascending, ascending))
            .collect()
    }

    /// A window function over a key's changes in sequence order, from its first change to
    /// the current one.
    fn over(&self, f: Expr) -> Result<Expr> {
        f.partition_by(self.keys.clone())
            .order_by(self.sort(true))
            .window_frame(WindowFrame::new_bounds(
                WindowFrameUnits::Rows,
                WindowFrameBound::Preceding(datafusion::common::ScalarValue::UInt64(None)),
                WindowFrameBound::CurrentRow,
            ))
            .build()
    }
}

/// Type 1: each key's latest change, left out when it deletes the key.
pub(crate) fn latest(changes: DataFrame, by: &ChangeOrder) -> Result<DataFrame> {
    let rank = row_number()
        .partition_by(by.keys.clone())
        .order_by(by.sort(false))
        .build()?
        .alias(RANK);
    changes
        .window(vec![rank])?
        .filter(col(RANK).eq(lit(1u64)).and(not(by.delete.clone())))
}

/// Type 2: a row per version, with the sequence values that opened (`start`) and closed
/// (`end`) it; `tracked` are the columns whose changes open a new version.
pub(crate) fn versions(
    changes: DataFrame,
    by: &ChangeOrder,
    tracked: &[Expr],
    start: &str,
    end: &str,
) -> Result<DataFrame> {
    // What the change before and after each one was.
    let mut around = vec![
        by.over(lag(by.delete.clone(), Some(1), None))?
            .alias(PREVIOUS_DELETE),
        lead_in_order(by, by.sequence.clone())?.alias(NEXT_SEQUENCE),
    ];
    for (i, t) in tracked.iter().enumerate() {
        around.push(by.over(lag(t.clone(), Some(1), None))?.alias(previous(i)));
    }
    let changed = tracked
        .iter()
        .enumerate()
        .map(|(i, t)| binary_expr(t.clone(), Operator::IsDistinctFrom, col(previous(i))))
        .fold(coalesce(vec![col(PREVIOUS_DELETE), lit(true)]), Expr::or);
    let opens = not(by.delete.clone()).and(changed);
    // The version a change belongs to starts at the latest change that opened one: sequences
    // only grow along a key, so that is the running maximum of the openers' sequences.
    let opened_at = Expr::from(WindowFunction::new(
        max_udaf(),
        vec![when(col(OPENS), by.sequence.clone()).end()?],
    ));
    let rows = changes
        .window(around)?
        .with_column(OPENS, opens)?
        .window(vec![by.over(opened_at)?.alias(start)])?
        .filter(not(by.delete.clone()))?
        // A version's row is its last change: untracked columns are updated in place.
        .window(vec![lead_in_order(by, col(OPENS))?.alias(NEXT_OPENS)])?
        .filter(col(NEXT_OPENS).is_null().or(col(NEXT_OPENS)))?;
    rows.with_column(end, col(NEXT_SEQUENCE))
}

/// The value of `e` in the key's next change. (`lead` and `lag` are given their offset: with
/// none, DataFusion 55 returns the current row's value, not the next one as documented.)
fn lead_in_order(by: &ChangeOrder, e: Expr) -> Result<Expr> {
    lead(e, Some(1), None)
        .partition_by(by.keys.clone())
        .order_by(by.sort(true))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use std::sync::Arc;

    /// Changes `(key, seq, name, city, delete)`, in the order given (arrival order).
    fn changes(rows: &[(i64, i64, &str, &str, bool)]) -> DataFrame {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("seq", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("city", DataType::Utf8, true),
            Field::new("del", DataType::Boolean, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.4)))),
            ],
        )
        .unwrap();
        SessionContext::new().read_batch(batch).unwrap()
    }

    fn by() -> ChangeOrder {
        ChangeOrder {
            keys: vec![col("id")],
            order: vec![col("seq")],
            sequence: col("seq"),
            delete: col("del"),
        }
    }

    async fn rows(df: DataFrame, columns: &[&str]) -> Vec<String> {
        let df = df
            .select(columns.iter().map(|c| col(*c)).collect::<Vec<_>>())
            .unwrap()
            .sort(vec![
                col("id").sort(true, true),
                col(columns[1]).sort(true, true),
            ])
            .unwrap();
        let text =
            datafusion::arrow::util::pretty::pretty_format_batches(&df.collect().await.unwrap())
                .unwrap()
                .to_string();
        text.lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[tokio::test]
    async fn type_1_keeps_the_latest_change_by_sequence_and_drops_deleted_keys() {
        let feed = changes(&[
            (1, 3, "c", "x", false),
            (1, 1, "a", "x", false),
            (1, 2, "b", "x", false),
            (2, 1, "a", "x", false),
            (2, 2, "", "", true),
            (3, 2, "", "", true),
            (3, 1, "late", "x", false),
        ]);
        let got = rows(latest(feed, &by()).unwrap(), &["id", "seq", "name"]).await;
        assert_eq!(got, ["| 1 | 3 | c |"]);
    }

    #[tokio::test]
    async fn type_2_opens_versions_on_tracked_changes_and_closes_them_on_deletes() {
        let feed = changes(&[
            (1, 1, "a", "x", false),
            (1, 4, "b", "z", false), // tracked: opens version 2 at 4
            (1, 2, "a", "y", false), // untracked: updates version 1 in place
            (1, 6, "c", "z", false), // opens version 3 after the delete
            (1, 5, "", "", true),    // closes version 2 at 5
            (1, 3, "a", "w", false), // late and untracked: version 1's last values
            (2, 1, "a", "x", false),
            (2, 2, "", "", true),
            (3, 1, "", "", true), // deletes nothing
            (3, 2, "a", "x", false),
            (4, 1, "a", "x", false),
            (4, 2, "a", "x", false), // the same values: no new version
        ]);
        let tracked = [col("name")];
        let got = versions(feed, &by(), &tracked, "start", "end").unwrap();
        let got = rows(got, &["id", "start", "end", "name", "city"]).await;
        assert_eq!(
            got,
            [
                "| 1 | 1 | 4 | a | w |",
                "| 1 | 4 | 5 | b | z |",
                "| 1 | 6 | | c | z |",
                "| 2 | 1 | 2 | a | x |",
                "| 3 | 2 | | a | x |",
                "| 4 | 1 | | a | x |",
            ]
        );
    }
}
