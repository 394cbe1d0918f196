//! The SQL of quality checks that judge rows one by one, shared by the coordinator (which
//! counts failing rows on a table's next version) and the executors (which drop or
//! quarantine failing rows as they write).

use crate::spec::{Bound, CheckKind, CheckSpec};
use crate::sql::{quote_ident, quote_literal};

/// The check's columns, quoted for SQL.
pub fn columns(check: &CheckSpec) -> Vec<String> {
    check
        .all_columns()
        .iter()
        .map(|c| quote_ident(&c.value))
        .collect()
}

/// The SQL condition a row breaking `check` meets; `None` for the checks that need a query
/// of their own.
pub fn failing_row(check: &CheckSpec) -> Option<String> {
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
            // On lines of its own: a `-- comment` ending the user's text ends with its line.
            format!("NOT coalesce((\n{expr}\n), false)")
        }
        CheckKind::AcceptedValues => {
            let values: Vec<String> = check.values.iter().map(literal).collect();
            cols.iter()
                .map(|c| format!("({c} IS NOT NULL AND {c} NOT IN ({}))", values.join(", ")))
                .collect::<Vec<_>>()
                .join(" OR ")
        }
        CheckKind::Regex => {
            let pattern = check.pattern.as_ref().map_or("", |p| p.value.as_str());
            cols.iter()
                .map(|c| {
                    format!(
                        "({c} IS NOT NULL AND NOT regexp_like(CAST({c} AS VARCHAR), {}))",
                        quote_literal(pattern)
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ")
        }
        CheckKind::Unique | CheckKind::ForeignKey | CheckKind::RowCount | CheckKind::Freshness => {
            return None;
        }
    };
    Some(format!("({condition})"))
}

fn literal(bound: &Bound) -> String {
    match bound {
        Bound::Number(n) => n.to_string(),
        Bound::Text(t) => quote_literal(t),
    }
}
