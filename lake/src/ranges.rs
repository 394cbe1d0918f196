//! Ranges of a key that split a table's rows between tasks along the files that hold them.
//!
//! Silver splits a table's rows between its tasks by key. A split by key hash sends every
//! file to every task, each decoding all of it to keep its share. When the input's files hold
//! separate ranges of the first key (ids that grow as files arrive, TPC-H's generated parts),
//! ranges of that key split the rows as well, and a task reads only the files of its range:
//! the Delta scan skips the others by their statistics. [`key_ranges`] finds such ranges.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let opts = medallion_lake::StorageOptions::new();
//! // Two tasks: rows below the cut go to the first (with null keys), the rest to the second.
//! if let Some(cuts) = medallion_lake::ranges::key_ranges("/lake/bronze/orders", &opts, 3, "id", 2).await? {
//!     assert_eq!(cuts.len(), 1);
//! }
//! # Ok(()) }
//! ```

use std::cmp::Ordering;

use anyhow::Result;
use serde_json::Value;

use crate::{StorageOptions, open_version};

/// The most rows, as a share of a task's, that may sit in files a cut runs through (files
/// both tasks around it read).
const STRADDLING: f64 = 0.1;

/// Where to cut `column` of the table at `version` into `parts` ranges (`parts - 1` values,
/// ascending, as its statistics write them), when the cuts leave each range about the same
/// rows and run through few files; `None` when they would not, or when a file has no
/// statistics of the column.
pub async fn key_ranges(
    uri: &str,
    opts: &StorageOptions,
    version: u64,
    column: &str,
    parts: u32,
) -> Result<Option<Vec<Value>>> {
    let table = open_version(uri, opts, version).await?;
    let mut files = Vec::new();
    for file in table.snapshot()?.log_data() {
        match file.stats().as_deref().and_then(|s| span(s, column)) {
            Some(span) => files.push(span),
            None => return Ok(None),
        }
    }
    Ok(cuts(files, parts))
}

/// One file's rows and the least and greatest value of the column in them.
#[derive(Debug, Clone)]
struct Span {
    rows: u64,
    least: Value,
    greatest: Value,
}

fn span(stats: &str, column: &str) -> Option<Span> {
    let stats: Value = serde_json::from_str(stats).ok()?;
    let rows = stats.get("numRecords")?.as_u64()?;
    let least = stats.get("minValues")?.get(column)?.clone();
    let greatest = stats.get("maxValues")?.get(column)?.clone();
    let bounded = |v: &Value| v.is_number() || v.is_string();
    (bounded(&least) && bounded(&greatest)).then_some(Span {
        rows,
        least,
        greatest,
    })
}

/// Orders two bounds of one column: numbers as numbers, text as bytes.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => None,
    }
}

/// Cuts at files' least values: the `k`th cut where the rows of the files wholly below it
/// come closest to `k` shares of all.
fn cuts(mut files: Vec<Span>, parts: u32) -> Option<Vec<Value>> {
    let parts = u64::from(parts);
    let total: u64 = files.iter().map(|f| f.rows).sum();
    if parts < 2 || total == 0 {
        return None;
    }
    // Files whose bounds do not compare (mixed kinds) cannot be placed.
    for f in &files {
        compare(&f.least, &f.greatest)?;
    }
    files.sort_by(|a, b| compare(&a.least, &b.least).unwrap_or(Ordering::Equal));
    let below = |cut: &Value| -> Option<(u64, u64)> {
        let (mut below, mut straddling) = (0, 0);
        for f in &files {
            if compare(&f.greatest, cut)? == Ordering::Less {
                below += f.rows;
            } else if compare(&f.least, cut)? == Ordering::Less {
                straddling += f.rows;
            }
        }
        Some((below, straddling))
    };
    let mut chosen: Vec<Value> = Vec::new();
    for k in 1..parts {
        let target = total * k / parts;
        let mut best: Option<(u64, &Value, u64)> = None;
        for f in &files[1..] {
            let (rows, straddling) = below(&f.least)?;
            let off = (rows + straddling / 2).abs_diff(target);
            if best.is_none_or(|(o, _, _)| off < o) {
                best = Some((off, &f.least, straddling));
            }
        }
        let (off, cut, straddling) = best?;
        let share = (total / parts) as f64;
        if off as f64 > share * 0.25 || straddling as f64 > share * STRADDLING {
            return None;
        }
        if let Some(last) = chosen.last()
            && compare(last, cut)? != Ordering::Less
        {
            return None;
        }
        chosen.push(cut.clone());
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(rows: u64, least: Value, greatest: Value) -> Span {
        Span {
            rows,
            least,
            greatest,
        }
    }

    #[test]
    fn files_of_separate_ranges_are_cut_between_them_into_even_shares() {
        let files: Vec<Span> = (0..8)
            .rev()
            .map(|i| file(100, json!(i * 1000 + 1), json!(i * 1000 + 999)))
            .collect();
        assert_eq!(cuts(files.clone(), 2), Some(vec![json!(4001)]));
        assert_eq!(
            cuts(files.clone(), 4),
            Some(vec![json!(2001), json!(4001), json!(6001)])
        );
        assert_eq!(cuts(files, 1), None, "one task needs no cut");
        let text = vec![
            file(10, json!("a"), json!("f")),
            file(10, json!("g"), json!("m")),
        ];
        assert_eq!(cuts(text, 2), Some(vec![json!("g")]));
    }

    #[test]
    fn files_that_overlap_or_cannot_make_even_shares_are_not_cut() {
        // Every file holds keys of the whole range (updates to old keys in each).
        let spread: Vec<Span> = (0..4).map(|i| file(100, json!(i), json!(9000))).collect();
        assert_eq!(cuts(spread, 2), None);
        // One file holds most rows: no cut leaves each task about half.
        let lopsided = vec![
            file(1000, json!(1), json!(500)),
            file(10, json!(501), json!(600)),
        ];
        assert_eq!(cuts(lopsided, 2), None);
        // One file cannot be cut along files.
        assert_eq!(cuts(vec![file(100, json!(1), json!(50))], 2), None);
        // Bounds of different kinds do not compare.
        let mixed = vec![file(10, json!(1), json!("z")), file(10, json!(5), json!(9))];
        assert_eq!(cuts(mixed, 2), None);
    }

    #[test]
    fn a_file_without_statistics_of_the_column_has_no_span() {
        let stats =
            r#"{"numRecords":5,"minValues":{"id":3,"name":"a"},"maxValues":{"id":9,"name":"c"}}"#;
        assert_eq!(span(stats, "id").unwrap().greatest, json!(9));
        assert!(span(stats, "other").is_none());
        assert!(span(r#"{"numRecords":5}"#, "id").is_none());
    }
}
