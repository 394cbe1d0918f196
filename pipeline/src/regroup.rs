//! Which gold queries can be refreshed by recomputing only the groups a change touched.
//!
//! In `SELECT ... FROM a JOIN b ON a.k = b.k ... GROUP BY b.k, ...`, every row of `a` with a
//! given value of `a.k` lands in groups with that value of `b.k` only (inner joins, and the ON
//! equality). So when only `a` changed, the groups that can differ are those whose key is a
//! value of `a.k` in a changed row (before or after the change), and computing the query over
//! the rows of `a` with those values gives exactly those groups, whatever the aggregates
//! (`count(DISTINCT ...)` and `avg` included): each is computed over its whole group.
//!
//! ```
//! use medallion_pipeline::{TableRef, regroup::group_key};
//!
//! let sql = "SELECT c.id, c.name, count(*) AS orders FROM silver.orders o \
//!            JOIN silver.customers c ON o.customer_id = c.id GROUP BY c.id, c.name";
//! let orders: TableRef = "silver.orders".parse().unwrap();
//! let key = group_key(sql, &orders).unwrap();
//! assert_eq!((key.input_column.as_str(), key.output_column.as_str()), ("customer_id", "id"));
//!
//! let top = "SELECT status, count(*) AS n FROM silver.orders GROUP BY status LIMIT 2";
//! assert!(group_key(top, &orders).unwrap_err().contains("LIMIT"));
//! ```

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Ident, JoinConstraint, JoinOperator, ObjectNamePart, Query,
    SelectItem, SetExpr, Statement, TableFactor, visit_expressions,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::TableRef;

/// The column that decides which groups a changed row touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// The changed input's column whose values name the touched groups.
    pub input_column: String,
    /// The output column that holds those values.
    pub output_column: String,
}

/// An incremental refresh of a gold table, as the planner decides it and a task runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regroup {
    /// The one input that changed since the table was last computed.
    pub input: TableRef,
    /// The input's version the table was last computed from: its changes after it count.
    pub after_version: u64,
    pub key: GroupKey,
    /// The table's version whose rows of untouched groups are kept.
    pub table_version: u64,
}

/// The group key through which changes to `changed` reach the query's groups, or why the
/// query must be recomputed in full.
pub fn group_key(sql: &str, changed: &TableRef) -> Result<GroupKey, String> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| e.to_string())?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err("its SQL is not one query".into());
    };
    let select = plain_select(query)?;
    let group_by = group_by_list(select)?;
    let no = |what: &str| Err(format!("its query has {what}"));
    let [from] = select.from.as_slice() else {
        return no("more than one FROM item");
    };
    // Every table by the name the query uses for it; the equalities of the ON clauses.
    let mut tables = BTreeMap::new();
    let mut equal: Vec<(Column, Column)> = Vec::new();
    add_table(&mut tables, &from.relation)?;
    for join in &from.joins {
        let (JoinOperator::Join(on) | JoinOperator::Inner(on)) = &join.join_operator else {
            return no("a join that is not an inner join");
        };
        add_table(&mut tables, &join.relation)?;
        if let JoinConstraint::On(e) = on {
            equalities(e, &mut equal);
        }
    }
    let changed_names: Vec<&String> = tables
        .iter()
        .filter(|(_, t)| *t == changed)
        .map(|(name, _)| name)
        .collect();
    let [changed_name] = changed_names.as_slice() else {
        return Err(format!(
            "its query reads {changed} more than once or not at all"
        ));
    };
    let only_table = (tables.len() == 1).then(|| (*changed_name).clone());
    let resolve = |e: &Expr| column(e, only_table.as_deref());
    for g in group_by {
        let Some(key) = resolve(g) else { continue };
        let input = if &key.table == *changed_name {
            Some(key.name.clone())
        } else {
            equal.iter().find_map(|(a, b)| match (a, b) {
                (a, b) if *a == key && &b.table == *changed_name => Some(b.name.clone()),
                (a, b) if *b == key && &a.table == *changed_name => Some(a.name.clone()),
                _ => None,
            })
        };
        let Some(input_column) = input else { continue };
        let output = select.projection.iter().find_map(|item| match item {
            SelectItem::UnnamedExpr(e) if resolve(e).as_ref() == Some(&key) => {
                Some(key.name.clone())
            }
            SelectItem::ExprWithAlias { expr, alias } if resolve(expr).as_ref() == Some(&key) => {
                Some(normalized(alias))
            }
            _ => None,
        });
        if let Some(output_column) = output {
            return Ok(GroupKey {
                input_column,
                output_column,
            });
        }
    }
    Err(format!(
        "no selected GROUP BY column is a column of {changed} or joined equal to one"
    ))
}

/// The SELECT's GROUP BY expressions, when groups are computed independently of each other
/// (no DISTINCT, window functions or subqueries).
fn group_by_list(select: &sqlparser::ast::Select) -> Result<&[Expr], String> {
    let no = |what: &str| Err(format!("its query has {what}"));
    if select.distinct.is_some() {
        return no("SELECT DISTINCT");
    }
    if select.qualify.is_some() || !select.named_window.is_empty() {
        return no("window functions");
    }
    let nested = visit_expressions(select, |e| match e {
        Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
            ControlFlow::Break("a subquery")
        }
        Expr::Function(f) if f.over.is_some() => ControlFlow::Break("window functions"),
        _ => ControlFlow::Continue(()),
    });
    if let ControlFlow::Break(what) = nested {
        return no(what);
    }
    let GroupByExpr::Expressions(group_by, modifiers) = &select.group_by else {
        return no("GROUP BY ALL");
    };
    if group_by.is_empty() || !modifiers.is_empty() {
        return no("no plain GROUP BY");
    }
    Ok(group_by)
}

/// The query's one SELECT, without what makes groups depend on each other.
fn plain_select(query: &Query) -> Result<&sqlparser::ast::Select, String> {
    if query.with.is_some() {
        return Err("its query has a WITH clause".into());
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return Err("its query has a LIMIT".into());
    }
    match query.body.as_ref() {
        SetExpr::Select(select) => Ok(select),
        _ => Err("its query is not a single SELECT".into()),
    }
}

/// A column as `<table name or alias>.<column>`, names as SQL resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    table: String,
    name: String,
}

/// Unquoted identifiers are case-insensitive (DataFusion lowercases them).
fn normalized(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// `t.c`, or `c` when the query reads one table (`only`).
fn column(e: &Expr, only: Option<&str>) -> Option<Column> {
    match e {
        Expr::Nested(e) => column(e, only),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [table, name] => Some(Column {
                table: normalized(table),
                name: normalized(name),
            }),
            _ => None,
        },
        Expr::Identifier(name) => only.map(|t| Column {
            table: t.to_string(),
            name: normalized(name),
        }),
        _ => None,
    }
}

/// The `a.x = b.y` conjuncts of an ON condition.
fn equalities(e: &Expr, out: &mut Vec<(Column, Column)>) {
    match e {
        Expr::Nested(e) => equalities(e, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            equalities(left, out);
            equalities(right, out);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            if let (Some(a), Some(b)) = (column(left, None), column(right, None)) {
                out.push((a, b));
            }
        }
        _ => {}
    }
}

/// Records a FROM item that is a table, under its alias or its name's last part.
fn add_table(tables: &mut BTreeMap<String, TableRef>, factor: &TableFactor) -> Result<(), String> {
    let TableFactor::Table { name, alias, .. } = factor else {
        return Err("its query reads something other than tables".into());
    };
    let parts: Option<Vec<String>> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(normalized(i)),
            _ => None,
        })
        .collect();
    let parts = parts.ok_or("its query names a table by a function")?;
    let table: TableRef = parts.join(".").parse()?;
    let used = match alias {
        Some(a) => normalized(&a.name),
        None => parts.last().cloned().unwrap_or_default(),
    };
    if tables.insert(used.clone(), table).is_some() {
        return Err(format!("its query uses the name '{used}' twice"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Result<(String, String), String> {
        let orders: TableRef = "silver.orders".parse().unwrap();
        group_key(sql, &orders).map(|k| (k.input_column, k.output_column))
    }

    #[test]
    fn a_group_column_of_the_changed_input_or_joined_equal_to_one() {
        let ok = |a: &str, b: &str| Ok((a.to_string(), b.to_string()));
        assert_eq!(
            key("SELECT status, count(*) FROM silver.orders GROUP BY status"),
            ok("status", "status")
        );
        assert_eq!(
            key(
                "SELECT o.Status AS s, sum(amount) FROM silver.orders o WHERE amount > 0 \
                 GROUP BY o.status HAVING count(*) > 1"
            ),
            ok("status", "s")
        );
        assert_eq!(
            key(
                "SELECT p.product_id, count(DISTINCT o.customer_id) FROM silver.orders o \
                 INNER JOIN silver.products p ON (o.product_id = p.product_id AND p.active) \
                 GROUP BY p.product_id, p.name"
            ),
            ok("product_id", "product_id")
        );
    }

    #[test]
    fn queries_whose_groups_depend_on_other_rows_are_refused() {
        let refused = |sql: &str, why: &str| {
            let got = key(sql).unwrap_err();
            assert!(got.contains(why), "{sql}: {got}");
        };
        let base = "FROM silver.orders o JOIN silver.customers c ON o.customer_id = c.id";
        refused(
            &format!("SELECT c.region, count(*) {base} GROUP BY c.region"),
            "no selected",
        );
        refused(
            &format!("SELECT c.id, count(*) {base} GROUP BY c.id LIMIT 3"),
            "LIMIT",
        );
        refused(
            "SELECT c.id, count(*) FROM silver.customers c LEFT JOIN silver.orders o \
             ON o.customer_id = c.id GROUP BY c.id",
            "not an inner join",
        );
        refused(
            "SELECT status, rank() OVER (ORDER BY count(*)) FROM silver.orders GROUP BY status",
            "window functions",
        );
        refused(
            "SELECT status, count(*) FROM silver.orders WHERE amount > \
             (SELECT avg(amount) FROM silver.orders) GROUP BY status",
            "subquery",
        );
        refused("SELECT status FROM silver.orders", "no plain GROUP BY");
        refused(
            "SELECT a.status, count(*) FROM silver.orders a JOIN silver.orders b \
             ON a.order_id = b.order_id GROUP BY a.status",
            "more than once",
        );
    }
}
