//! How `medallion pipelines` and the other schedule commands show deployed pipelines: an
//! aligned table for people (times in the viewer's words: "in 3m", "2h ago"), JSON for tools.

use chrono::{DateTime, Utc};
use comfy_table::{Table, presets::NOTHING};
use medallion_proto::{PipelineInfo, RunInfo, TableFreshness};

use crate::remote::state_name;

/// `ms` (since the epoch) relative to `now`: "in 4m 10s", "2h 5m ago"; "-" for 0.
pub fn relative(ms: i64, now: DateTime<Utc>) -> String {
    if ms == 0 {
        return "-".into();
    }
    let delta = ms - now.timestamp_millis();
    let span = std::time::Duration::from_secs((delta.unsigned_abs() / 1000).max(1));
    let words = coarse(span);
    if delta >= 0 {
        format!("in {words}")
    } else {
        format!("{words} ago")
    }
}

/// A duration to its two largest units (`3d 4h`, `5m 2s`).
fn coarse(span: std::time::Duration) -> String {
    let secs = span.as_secs();
    let units = [(86_400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(secs, |left, (size, unit)| {
            let n = *left / size;
            *left %= size;
            Some((n, unit))
        })
        .skip_while(|(n, _)| *n == 0)
        .take(2)
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

fn last_run(run: Option<&RunInfo>, now: DateTime<Utc>) -> String {
    match run {
        None => "-".into(),
        Some(r) => format!(
            "{} {} ({})",
            state_name(r),
            r.ds,
            relative(r.submitted_ms, now)
        ),
    }
}

/// The table that changed longest ago (or never), and when.
fn stalest(p: &PipelineInfo, now: DateTime<Utc>) -> String {
    match p.tables.iter().min_by_key(|t| t.committed_ms) {
        None => "-".into(),
        Some(t) if t.committed_ms == 0 => format!("{} never", t.table),
        Some(t) => format!("{} {}", t.table, relative(t.committed_ms, now)),
    }
}

/// The deployed pipelines as an aligned table.
pub fn table(pipelines: &[PipelineInfo], now: DateTime<Utc>) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header([
        "PIPELINE", "VERSION", "SCHEDULE", "STATE", "ACTIVE", "NEXT RUN", "LAST RUN", "STALEST",
        "BACKFILL", "TAGS",
    ]);
    for p in pipelines {
        let state = if p.paused { "paused" } else { "active" };
        let schedule = if p.schedule.is_empty() {
            "-".to_string()
        } else {
            p.schedule.clone()
        };
        table.add_row([
            p.name.clone(),
            p.version.to_string(),
            schedule,
            state.to_string(),
            format!("{}/{}", p.active_runs, p.max_active_runs),
            relative(p.next_run_ms, now),
            last_run(p.last_run.as_ref(), now),
            stalest(p, now),
            p.backfill_pending.to_string(),
            p.tags.join(","),
        ]);
    }
    table.to_string()
}

/// A pipeline's tables, in dependency order, with when each last changed.
pub fn freshness_table(p: &PipelineInfo, now: DateTime<Utc>) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(["TABLE", "VERSION", "CHANGED", "BY RUN"]);
    for t in &p.tables {
        let (version, changed) = match t.committed_ms {
            0 => ("-".to_string(), "never".to_string()),
            ms => (t.version.to_string(), relative(ms, now)),
        };
        let run = if t.run_id.is_empty() { "-" } else { &t.run_id };
        table.add_row([t.table.clone(), version, changed, run.to_string()]);
    }
    table.to_string()
}

fn freshness_json(t: &TableFreshness) -> serde_json::Value {
    let committed = t.committed_ms != 0;
    serde_json::json!({
        "table": t.table,
        "version": committed.then_some(t.version),
        "committed_ms": committed.then_some(t.committed_ms),
        "run_id": (!t.run_id.is_empty()).then_some(&t.run_id),
    })
}

/// A deployed pipeline as JSON.
pub fn json(p: &PipelineInfo) -> serde_json::Value {
    let last = p.last_run.as_ref().map(|r| {
        serde_json::json!({
            "run_id": r.run_id, "state": state_name(r), "ds": r.ds,
            "trigger": r.trigger, "submitted_ms": r.submitted_ms, "ended_ms": r.ended_ms,
        })
    });
    serde_json::json!({
        "name": p.name, "version": p.version, "paused": p.paused, "schedule": p.schedule,
        "tags": p.tags, "next_run_ms": p.next_run_ms, "last_run": last,
        "deployed_ms": p.deployed_ms, "backfill_pending": p.backfill_pending,
        "max_active_runs": p.max_active_runs, "active_runs": p.active_runs,
        "tables": p.tables.iter().map(freshness_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_people_say_them() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let at = |secs: i64| (1_000_000 + secs) * 1000;
        assert_eq!(relative(at(250), now), "in 4m 10s");
        assert_eq!(relative(at(-7500), now), "2h 5m ago");
        assert_eq!(relative(at(3 * 86_400 + 60), now), "in 3d");
        assert_eq!(relative(0, now), "-");
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let now = DateTime::from_timestamp(1_000_000, 0).unwrap();
        let p = |name: &str| PipelineInfo {
            name: name.into(),
            version: 2,
            schedule: "0 */4 * * * UTC".into(),
            next_run_ms: 1_000_060_000,
            max_active_runs: 1,
            ..Default::default()
        };
        let text = table(&[p("shop"), p("a_much_longer_name")], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let column = |l: &str| l.find("0 */4").unwrap();
        assert_eq!(column(lines[1]), column(lines[2]), "{text}");
        assert!(lines[1].contains("in 1m"), "{text}");
    }
}
