//! The end-of-run summary: a line per table, then every quality check.

use std::fmt::Write;

use medallion_coordinator::{RunReport, TableStatus};
use medallion_pipeline::report::ChangedFiles;
use medallion_pipeline::spec::OnChange;
use medallion_pipeline::{Layer, Pipeline};

/// The tables in the order a run takes them, each with what it reads.
pub fn render_dag(pipeline: &Pipeline) -> String {
    let mut out = String::new();
    for table in pipeline.dag.topological_order().unwrap_or_default() {
        let reads: Vec<String> = match table.layer {
            Layer::Bronze => pipeline
                .bronze(&table.name)
                .map(|b| format!("source {}", b.source.value))
                .into_iter()
                .collect(),
            _ => pipeline
                .dag
                .deps(&table)
                .iter()
                .map(ToString::to_string)
                .collect(),
        };
        let name = table.to_string();
        let _ = writeln!(out, "  {name:<28} <- {}", reads.join(", "));
    }
    out
}

/// Renders a run report for a terminal.
pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    let verdict = if report.succeeded {
        "succeeded"
    } else {
        "FAILED"
    };
    let _ = writeln!(
        out,
        "run {} {verdict} in {:.1}s",
        report.run_id,
        report.duration_ms as f64 / 1000.0
    );
    // Wide enough for the longest table name, so the columns line up.
    let w = report
        .tables
        .iter()
        .map(|t| t.table.len())
        .max()
        .unwrap_or(0)
        .max(26);
    render_tables(&mut out, report, w);
    render_notes(&mut out, report);
    render_checks(&mut out, report, w);
    render_errors(&mut out, report);
    out
}

/// A line per table: its status and counters.
fn render_tables(out: &mut String, report: &RunReport, w: usize) {
    let _ = writeln!(
        out,
        "{:<w$} {:<14} {:>8} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "TABLE",
        "STATUS",
        "FILES",
        "READ",
        "WRITTEN",
        "RESCUED",
        "FILTERED",
        "DEDUPED",
        "UPDATED",
        "INSERTED"
    );
    for t in &report.tables {
        let status = t.status.label();
        let m = &t.metrics;
        let _ = writeln!(
            out,
            "{:<w$} {:<14} {:>8} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8}",
            t.table,
            status,
            m.files_read,
            m.rows_read,
            m.rows_written,
            m.rows_rescued,
            m.rows_filtered,
            m.rows_deduplicated,
            m.rows_updated,
            m.rows_inserted
        );
    }
}

/// New columns, rescued records, incremental or full refreshes, and rows checks took out.
fn render_notes(out: &mut String, report: &RunReport) {
    for t in report.tables.iter().filter(|t| !t.columns_added.is_empty()) {
        let _ = writeln!(
            out,
            "note: {} has {} new column(s) from new fields in its files: {} (earlier rows read NULL)",
            t.table,
            t.columns_added.len(),
            t.columns_added.join(", ")
        );
    }
    for t in report.tables.iter() {
        let m = &t.metrics;
        if m.rows_malformed > 0 {
            let _ = writeln!(
                out,
                "note: {} kept {} malformed records in _rescued_data: they did not parse, or a \
                 value did not fit its column",
                t.table, m.rows_malformed
            );
        }
        let new_fields = m.rows_rescued.saturating_sub(m.rows_malformed);
        if new_fields > 0 {
            let _ = writeln!(
                out,
                "note: {} kept the new fields of {new_fields} records in _rescued_data: fields \
                 its columns do not have (schema_evolution)",
                t.table
            );
        }
    }
    for t in report
        .tables
        .iter()
        .filter(|t| !t.columns_widened.is_empty())
    {
        let _ = writeln!(
            out,
            "note: {} widened {} column(s), its earlier rows rewritten with the wider types: {}",
            t.table,
            t.columns_widened.len(),
            t.columns_widened.join(", ")
        );
    }
    for t in &report.tables {
        if let Some(changed) = &t.files_changed {
            render_changed_files(out, &t.table, changed);
        }
    }
    for t in report
        .tables
        .iter()
        .filter(|t| !matches!(t.status, TableStatus::UpToDate))
    {
        if let Some(refresh) = &t.refresh {
            let _ = writeln!(
                out,
                "note: {}: {}",
                t.table,
                refresh.describe(t.metrics.rows_read)
            );
        }
    }
    for t in &report.tables {
        let m = &t.metrics;
        if m.rows_dropped + m.rows_quarantined > 0 {
            let _ = writeln!(
                out,
                "note: {}: checks dropped {} rows and quarantined {} in {}__quarantine",
                t.table, m.rows_dropped, m.rows_quarantined, t.table
            );
        }
    }
}

/// Source files changed in place since they were ingested, and what bronze did.
fn render_changed_files(out: &mut String, table: &str, changed: &ChangedFiles) {
    let (n, files) = (changed.files.len(), changed.files.join(", "));
    let _ = match changed.action {
        OnChange::Skip => writeln!(
            out,
            "warning: {table}: {n} source file(s) changed since they were ingested and were \
             not ingested again (on_change: skip): {files}"
        ),
        OnChange::Reingest => writeln!(
            out,
            "note: {table}: {n} source file(s) changed since they were ingested; their rows \
             were replaced (on_change: reingest): {files}"
        ),
        // A failed table's error names the files.
        OnChange::Fail => Ok(()),
    };
}

/// Each quality check's verdict.
fn render_checks(out: &mut String, report: &RunReport, w: usize) {
    let checks: Vec<_> = report
        .tables
        .iter()
        .flat_map(|t| t.checks.iter().map(move |c| (t, c)))
        .collect();
    if checks.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nquality checks:");
    for (t, c) in checks {
        let verdict = if c.passed { "passed" } else { "FAILED" };
        let finding = match &c.detail {
            Some(detail) => detail.clone(),
            None => format!("{} of {} rows failing", c.failing_rows, c.total_rows),
        };
        let _ = writeln!(
            out,
            "  {:<w$} {:<28} {:<9} {verdict:<7} {finding}",
            t.table,
            c.name,
            format!("{:?}", c.severity).to_lowercase(),
        );
    }
}

/// Why tables failed or were skipped.
fn render_errors(out: &mut String, report: &RunReport) {
    for t in &report.tables {
        match &t.status {
            // Executor errors already start with the table's name.
            TableStatus::Failed { error } if error.starts_with(&t.table) => {
                let _ = writeln!(out, "\nerror: {error}");
            }
            TableStatus::Failed { error } => {
                let _ = writeln!(out, "\nerror: {}: {error}", t.table);
            }
            TableStatus::Skipped { reason } => {
                let _ = writeln!(out, "skipped {}: {reason}", t.table);
            }
            TableStatus::Kept { from_run } => {
                let _ = writeln!(out, "kept {} as run {from_run} committed it", t.table);
            }
            _ => {}
        }
    }
}
