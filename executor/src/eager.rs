//! Eager aggregation: a `GROUP BY` over a join to a table on its unique key is computed on the
//! other side first, so the join meets one row per group instead of every row.
//!
//! ```sql
//! SELECT c.id, c.name, sum(o.amount) FROM orders o JOIN customers c ON o.customer_id = c.id
//! GROUP BY c.id, c.name
//! ```
//! groups every joined order by the customer's key and text columns. When `customers` is
//! unique on `id` (declared: [`medallion_lake::unique::UniqueOn`]), an order meets at most one
//! customer and a group is one customer, so grouping the orders by `o.customer_id` and joining
//! the groups to `customers` gives the same rows: integers hashed instead of strings, and a
//! joined row per customer instead of per order (Yan and Larson, "Eager Aggregation and Lazy
//! Aggregation", VLDB 1995). The gold tables of a pipeline are mostly such queries over a
//! silver fact table and silver dimensions, each unique on its `keys`.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchema, Dependency, JoinType, NullEquality, Result};
use datafusion::logical_expr::{Aggregate, Expr, Join, JoinConstraint, LogicalPlan, Projection};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The rule, for a session's optimizer (after DataFusion's own: it reads the plan their
/// pushdowns left, and their next pass prunes the columns it no longer needs).
#[derive(Debug, Default)]
pub(crate) struct EagerAggregation;

impl OptimizerRule for EagerAggregation {
    fn name(&self) -> &str {
        "eager_aggregation"
    }

    /// Bottom up, so the outer of two stacked aggregates (DataFusion's plan of
    /// `count(DISTINCT x)`) sees the inner one already below the join, and follows it there.
    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        Ok(match aggregated_first(aggregate) {
            Some(rewritten) => Transformed::yes(rewritten),
            None => Transformed::no(plan),
        })
    }
}

/// `aggregate` computed below the join it reads, then joined and projected to its own
/// columns; `None` when that would not give the same rows (or the plan is not one it knows).
fn aggregated_first(aggregate: &Aggregate) -> Option<LogicalPlan> {
    let join = join_below(&aggregate.input)?;
    let plain = join.join_type == JoinType::Inner
        && join.filter.is_none()
        && join.null_equality == NullEquality::NullEqualsNothing
        && !aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)));
    if !plain {
        return None;
    }
    [Side::Right, Side::Left]
        .into_iter()
        .find_map(|dimension| below_join(aggregate, join, dimension))
}

/// The join an aggregate reads, directly or through a projection that only selects columns.
fn join_below(input: &LogicalPlan) -> Option<&Join> {
    let input = match input {
        LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
            p.input.as_ref()
        }
        other => other,
    };
    match input {
        LogicalPlan::Join(join) => Some(join),
        _ => None,
    }
}

/// A side of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// The rewrite with the join's `dimension` side as the table joined on its unique key: every
/// aggregate argument reads the other (fact) side; the group columns from the dimension are
/// plain columns that include a unique key of it, and that key is among the join's columns.
/// Then a fact row meets at most one dimension row, a group is one dimension row (with fact
/// values), and grouping the fact rows by their join columns and fact group values gives the
/// same groups, over the same rows.
fn below_join(aggregate: &Aggregate, join: &Join, dimension: Side) -> Option<LogicalPlan> {
    let (fact, dim) = match dimension {
        Side::Right => (&join.left, &join.right),
        Side::Left => (&join.right, &join.left),
    };
    let (fact_schema, dim_schema) = (fact.schema(), dim.schema());
    let mut keys = Vec::with_capacity(join.on.len());
    for (l, r) in &join.on {
        let (f, d) = match dimension {
            Side::Right => (l, r),
            Side::Left => (r, l),
        };
        let (f, d) = (f.try_as_col()?, d.try_as_col()?);
        // Floats join -0.0 to 0.0 but group them apart.
        if fact_schema
            .qualified_field_from_column(f)
            .ok()?
            .1
            .data_type()
            .is_floating()
        {
            return None;
        }
        keys.push((f.clone(), d.clone()));
    }
    let reads_fact = |e: &Expr| e.column_refs().iter().all(|c| fact_schema.has_column(c));
    let mut dim_groups = Vec::new();
    let mut groups: Vec<Expr> = keys.iter().map(|(f, _)| Expr::Column(f.clone())).collect();
    for g in &aggregate.group_expr {
        match g {
            Expr::Column(c) if dim_schema.has_column(c) => dim_groups.push(c),
            g if reads_fact(g) => {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
            _ => return None,
        }
    }
    if !aggregate.aggr_expr.iter().all(reads_fact) {
        return None;
    }
    if !whole_table(dim) {
        return None;
    }
    let dim_keys = keys.iter().map(|(_, d)| d).collect::<Vec<_>>();
    if !unique_within(dim_schema, &dim_keys) || !unique_within(dim_schema, &dim_groups) {
        return None;
    }
    let eager = Aggregate::try_new(fact.clone(), groups, aggregate.aggr_expr.clone()).ok()?;
    let eager = Arc::new(LogicalPlan::Aggregate(eager));
    let on = keys
        .into_iter()
        .map(|(f, d)| (Expr::Column(f), Expr::Column(d)));
    let (left, right, on) = match dimension {
        Side::Right => (eager, dim.clone(), on.collect()),
        Side::Left => (dim.clone(), eager, on.map(|(f, d)| (d, f)).collect()),
    };
    let (inner, null_equality) = (JoinType::Inner, NullEquality::NullEqualsNothing);
    let join = Join::try_new(
        left,
        right,
        on,
        None,
        inner,
        JoinConstraint::On,
        null_equality,
        false,
    )
    .ok()?;
    let columns = aggregate.schema.columns().into_iter().map(Expr::Column);
    let projection = Projection::try_new(columns.collect(), Arc::new(LogicalPlan::Join(join)));
    Some(LogicalPlan::Projection(projection.ok()?))
}

/// Whether `plan` reads every row of a table (columns chosen, renamed): then the join drops
/// only fact rows without a match, so aggregating the fact rows first does no more work. A
/// filtered dimension (`WHERE c.region = 'north'`) may drop most of them, and the join with
/// its pushed-down filter would then have spared their aggregation.
fn whole_table(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => scan.filters.is_empty() && scan.fetch.is_none(),
        LogicalPlan::SubqueryAlias(alias) => whole_table(&alias.input),
        LogicalPlan::Projection(p) => whole_table(&p.input),
        _ => false,
    }
}

/// Whether `columns` of `schema` include a key its rows are unique on.
fn unique_within(schema: &DFSchema, columns: &[&Column]) -> bool {
    let indices = columns
        .iter()
        .filter_map(|c| schema.maybe_index_of_column(c))
        .collect::<Vec<_>>();
    schema.functional_dependencies().iter().any(|dep| {
        dep.mode == Dependency::Single
            && !dep.source_indices.is_empty()
            && dep.source_indices.iter().all(|i| indices.contains(i))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::catalog::{MemTable, TableProvider};
    use datafusion::logical_expr::LogicalPlan;
    use datafusion::prelude::SessionContext;
    use medallion_lake::unique::UniqueOn;

    use super::EagerAggregation;

    /// Orders, some of a customer who does not exist (99) or of none (NULL).
    fn orders() -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("order_id", DataType::Int64, false),
            Field::new("customer_id", DataType::Int64, true),
            Field::new("product_id", DataType::Int64, false),
            Field::new("amount", DataType::Int64, false),
        ]));
        let column = |v: Vec<Option<i64>>| Arc::new(Int64Array::from(v)) as _;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                column((1..=8).map(Some).collect()),
                column(vec![
                    Some(1),
                    Some(2),
                    Some(1),
                    Some(3),
                    Some(99),
                    None,
                    Some(2),
                    Some(1),
                ]),
                column([10, 10, 20, 20, 10, 20, 30, 10].map(Some).to_vec()),
                column([5, 7, 11, 13, 17, 19, 23, 29].map(Some).to_vec()),
            ],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    /// Customers 1 to 3; with `duplicate`, customer 2 twice (another region).
    fn customers(duplicate: bool) -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("customer_id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("region", DataType::Utf8, false),
        ]));
        let (mut ids, mut names, mut regions) = (
            vec![1, 2, 3],
            vec!["ann", "bob", "cy"],
            vec!["north", "south", "north"],
        );
        if duplicate {
            ids.push(2);
            names.push("bob");
            regions.push("west");
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(regions)),
            ],
        )
        .unwrap();
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap())
    }

    /// A session with the rule or without it; customers declared unique on their id or not.
    fn session(rule: bool, customers: Arc<dyn TableProvider>, unique: bool) -> SessionContext {
        let ctx = SessionContext::new();
        if rule {
            ctx.add_optimizer_rule(Arc::new(EagerAggregation));
        }
        ctx.register_table("orders", orders()).unwrap();
        let customers = match unique {
            true => UniqueOn::table(customers, &["customer_id"]).unwrap(),
            false => customers,
        };
        ctx.register_table("customers", customers).unwrap();
        ctx
    }

    /// The query's rows, sorted, and whether its optimized plan aggregates below a join.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, bool) {
        let df = ctx.sql(&format!("{sql} ORDER BY 1, 2")).await.unwrap();
        let plan = df.clone().into_optimized_plan().unwrap();
        let batches = df.collect().await.unwrap();
        (
            pretty_format_batches(&batches).unwrap().to_string(),
            aggregates_below_join(&plan),
        )
    }

    fn aggregates_below_join(plan: &LogicalPlan) -> bool {
        let below = matches!(plan, LogicalPlan::Join(j)
            if [&j.left, &j.right].iter().any(|s| matches!(s.as_ref(), LogicalPlan::Aggregate(_))));
        below || plan.inputs().into_iter().any(aggregates_below_join)
    }

    const BY_CUSTOMER: &str = "SELECT c.customer_id, c.name, c.region, count(*) AS n, \
         sum(o.amount) AS total, max(o.order_id) AS last FROM orders o \
         JOIN customers c ON o.customer_id = c.customer_id GROUP BY c.customer_id, c.name, c.region";

    const DISTINCT_BY_CUSTOMER: &str = "SELECT c.customer_id, c.name, \
         count(DISTINCT o.product_id) AS products, sum(o.amount) AS total FROM customers c \
         JOIN orders o ON c.customer_id = o.customer_id GROUP BY c.customer_id, c.name";

    #[tokio::test]
    async fn groups_over_a_join_on_a_unique_key_are_computed_before_it_with_the_same_rows() {
        for sql in [BY_CUSTOMER, DISTINCT_BY_CUSTOMER] {
            let (expected, moved) = run(&session(false, customers(false), true), sql).await;
            assert!(
                !moved,
                "DataFusion alone keeps the aggregate above the join"
            );
            let (rows, moved) = run(&session(true, customers(false), true), sql).await;
            assert!(moved, "{sql}: not below the join");
            assert_eq!(rows, expected, "{sql}");
        }
        let (rows, _) = run(&session(true, customers(false), true), BY_CUSTOMER).await;
        // Customer 99 and the NULL customer meet no one; customer 1 has orders 1, 3 and 8.
        assert!(
            rows.contains("| 1           | ann  | north  | 3 | 45    | 8    |"),
            "{rows}"
        );
        assert_eq!(rows.lines().count(), 3 + 4, "{rows}");
    }

    #[tokio::test]
    async fn groups_stay_above_a_join_that_may_meet_a_row_twice_merge_groups_or_drop_most_rows() {
        let not_by_key = "SELECT c.region, sum(o.amount) AS total FROM orders o \
             JOIN customers c ON o.customer_id = c.customer_id GROUP BY c.region";
        let reads_both = "SELECT c.customer_id, sum(o.amount + length(c.name)) AS total \
             FROM orders o JOIN customers c ON o.customer_id = c.customer_id GROUP BY c.customer_id";
        let outer = "SELECT c.customer_id, c.name, count(o.order_id) AS n FROM customers c \
             LEFT JOIN orders o ON o.customer_id = c.customer_id GROUP BY c.customer_id, c.name";
        let filtered = "SELECT c.customer_id, c.name, sum(o.amount) AS total FROM orders o \
             JOIN customers c ON o.customer_id = c.customer_id WHERE c.region = 'south' \
             GROUP BY c.customer_id, c.name";
        let cases = [
            // Customer 2 twice: each of its orders meets two customer rows.
            (BY_CUSTOMER, customers(true), false),
            (not_by_key, customers(false), true),
            (reads_both, customers(false), true),
            (outer, customers(false), true),
            // The join keeps one customer's orders: aggregating all of them first costs more.
            (filtered, customers(false), true),
        ];
        for (sql, customers, unique) in cases {
            let (expected, _) = run(&session(false, customers.clone(), unique), sql).await;
            let (rows, moved) = run(&session(true, customers, unique), sql).await;
            assert!(!moved, "{sql}: moved below the join");
            assert_eq!(rows, expected, "{sql}");
        }
    }
}
