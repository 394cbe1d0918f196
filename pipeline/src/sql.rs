//! SQL helpers shared by validation and execution: parsing, quoting, table references.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{Query, Statement, Visit, Visitor};
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
    Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| {
            p.parse_expr()?;
            p.expect_token(&sqlparser::tokenizer::Token::EOF)
                .map(|_| ())
        })
        .map_err(|e| e.to_string())
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
        assert!(check_expr("amount > 0").is_ok());
        assert!(check_expr("amount > > 0").is_err());
        assert!(check_expr("a > 0 b").is_err());
    }
}
