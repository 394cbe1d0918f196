//! SQL helpers shared by validation and execution: parsing, quoting, table references.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Query,
    Statement, TableFactor, UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

/// Quotes an identifier so any column name survives SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Checks that `sql` is a single SQL expression.
pub fn check_expr(sql: &str) -> Result<(), String> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| {
            let expr = p.parse_expr()?;
            p.expect_token(&sqlparser::tokenizer::Token::EOF)?;
            Ok(expr)
        })
        .map_err(|e| e.to_string())?;
    check_no_subquery(&expr)?;
    check_generators(&expr)
}

/// Refuses subqueries in an expression: an expression reads the row it is given, and only a
/// gold query reads tables (those the spec declares, checked where the query is).
fn check_no_subquery(expr: &Expr) -> Result<(), String> {
    let found = sqlparser::ast::visit_expressions(expr, |e| match e {
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(()) => Err(
            "a subquery cannot be part of an expression: an expression reads its row only \
             (read other tables in a gold query)"
                .into(),
        ),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The most values a generating function may build from constant arguments.
const MAX_GENERATED: f64 = 16_777_216.0;

/// Refuses calls such as `range(1, 400000000)` or `repeat('x', 2147483647)`: these functions
/// build their whole result as one value, outside the memory pool that bounds sorts, joins
/// and aggregates, so a large constant would take the machine's memory whatever the limit.
/// (Table functions, `FROM range(...)`, are refused in queries: see [`TableFunctions`].)
fn check_generators(v: &impl Visit) -> Result<(), String> {
    let found = sqlparser::ast::visit_expressions(v, |e| match e {
        Expr::Function(f) => match generated(f) {
            Some(n) if n > MAX_GENERATED => ControlFlow::Break(format!(
                "`{f}` builds {n:.0} values at once, outside the memory limit; at most {MAX_GENERATED:.0} \
                 (a table function such as `FROM range(...)` streams its rows instead)"
            )),
            _ => ControlFlow::Continue(()),
        },
        _ => ControlFlow::Continue(()),
    });
    match found {
        ControlFlow::Break(message) => Err(message),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// How many values (list elements, characters) a generating function call builds, when its
/// arguments are constants.
fn generated(f: &Function) -> Option<f64> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let args: Vec<Option<f64>> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => constant(e),
            _ => None,
        })
        .collect();
    let name = f.name.to_string().to_ascii_lowercase();
    match (name.as_str(), args.as_slice()) {
        ("range" | "generate_series", [Some(end)]) => Some(end.abs()),
        ("range" | "generate_series", [Some(start), Some(end)]) => Some((end - start).abs()),
        ("range" | "generate_series", [Some(start), Some(end), Some(step)]) if *step != 0.0 => {
            Some(((end - start) / step).abs())
        }
        ("repeat" | "array_repeat" | "lpad" | "rpad", [_, Some(n), ..]) => Some(*n),
        _ => None,
    }
}

/// The value of a constant numeric expression (`2147483647`, `power(2, 31) - 1`).
fn constant(e: &Expr) -> Option<f64> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        Expr::Nested(e) | Expr::Cast { expr: e, .. } => constant(e),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => constant(expr).map(|n| -n),
        Expr::BinaryOp { left, op, right } => {
            let (a, b) = (constant(left)?, constant(right)?);
            match op {
                BinaryOperator::Plus => Some(a + b),
                BinaryOperator::Minus => Some(a - b),
                BinaryOperator::Multiply => Some(a * b),
                BinaryOperator::Divide if b != 0.0 => Some(a / b),
                _ => None,
            }
        }
        Expr::Function(f)
            if matches!(
                f.name.to_string().to_ascii_lowercase().as_str(),
                "power" | "pow"
            ) =>
        {
            let FunctionArguments::List(list) = &f.args else {
                return None;
            };
            match list.args.as_slice() {
                [
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(a)),
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(b)),
                ] => Some(constant(a)?.powf(constant(b)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The tables a query reads, as written (`silver.orders`), without its CTE names.
pub fn query_tables(sql: &str) -> Result<BTreeSet<String>, String> {
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| e.to_string())?;
    let [statement] = statements.as_slice() else {
        return Err(format!(
            "expected exactly one SQL statement, found {}",
            statements.len()
        ));
    };
    if !matches!(statement, Statement::Query(_)) {
        return Err("expected a query (SELECT or WITH ... SELECT)".into());
    }
    let mut ctes = BTreeSet::new();
    let _ = statement.visit(&mut CteNames(&mut ctes));
    if let ControlFlow::Break(name) = statement.visit(&mut TableFunctions) {
        return Err(format!(
            "'{name}(...)': table functions cannot be used; a query reads the pipeline's own \
             tables only"
        ));
    }
    check_generators(statement)?;
    let mut tables = BTreeSet::new();
    let _ = sqlparser::ast::visit_relations(statement, |name| {
        let written = name.to_string();
        if !ctes.contains(&written) {
            tables.insert(written);
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(tables)
}

/// Finds a call in FROM (`read_csv('/etc/passwd')`, `range(10)`): a query may read files
/// or make rows only through the tables the spec declares.
struct TableFunctions;

impl Visitor for TableFunctions {
    type Break = String;

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<String> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => ControlFlow::Break(name.to_string()),
            TableFactor::TableFunction { expr, .. } => ControlFlow::Break(expr.to_string()),
            _ => ControlFlow::Continue(()),
        }
    }
}

struct CteNames<'a>(&'a mut BTreeSet<String>);

impl Visitor for CteNames<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.0.insert(cte.alias.name.to_string());
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_exclude_ctes() {
        let t = query_tables(
            "WITH o AS (SELECT * FROM silver.orders) \
             SELECT * FROM o JOIN silver.customers c USING (customer_id)",
        )
        .unwrap();
        assert_eq!(
            t.into_iter().collect::<Vec<_>>(),
            ["silver.customers", "silver.orders"]
        );
    }

    #[test]
    fn rejects_non_queries_and_bad_expressions() {
        assert!(query_tables("DROP TABLE x").is_err());
        assert!(query_tables("SELECT 1; SELECT 2").is_err());
        for sql in [
            "SELECT * FROM read_csv('/etc/passwd')",
            "SELECT * FROM silver.a JOIN read_parquet('/etc') ON true",
            "WITH t AS (SELECT * FROM range(10)) SELECT * FROM t",
            "SELECT * FROM TABLE(read_csv('/etc/passwd'))",
        ] {
            let err = query_tables(sql).unwrap_err();
            assert!(
                err.contains("table functions cannot be used"),
                "{sql}: {err}"
            );
        }
        assert!(check_expr("amount > 0").is_ok());
        assert!(check_expr("amount > > 0").is_err());
        assert!(check_expr("a > 0 b").is_err());
        let err = check_expr("(SELECT max(x) FROM read_csv('/etc/passwd')) > 0").unwrap_err();
        assert!(err.contains("subquery"), "{err}");
        assert!(check_expr("id IN (SELECT 1)").is_err());
        assert!(check_expr("EXISTS (SELECT 1)").is_err());
    }

    #[test]
    fn refuses_huge_constant_generators_only() {
        let err =
            query_tables("SELECT count(*) FROM (SELECT unnest(range(1, 400000000)))").unwrap_err();
        assert!(err.contains("builds 399999999 values"), "{err}");
        assert!(check_expr("length(repeat('x', power(2, 31) - 1))").is_err());
        assert!(check_expr("lpad(name, 100000000)").is_err());
        // Small constants, column-driven sizes and streaming table functions are fine.
        assert!(check_expr("repeat('-', 10)").is_ok());
        assert!(check_expr("repeat(name, n)").is_ok());
        assert!(query_tables("SELECT * FROM silver.x, (SELECT 1) AS one").is_ok());
        assert!(query_tables("SELECT unnest(range(0, 1000))").is_ok());
    }
}
