//! Live progress of a run: a bar per table, filled as its tasks finish.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use medallion_coordinator::{RunEvent, RunObserver};

/// Draws progress bars on stderr, or prints a line per finished table when bars cannot show.
pub struct ProgressBars {
    bars: MultiProgress,
    /// Print a line per finished table instead of drawing bars.
    lines: bool,
    tables: Mutex<HashMap<String, ProgressBar>>,
    style: ProgressStyle,
}

impl ProgressBars {
    pub fn new(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            bars: MultiProgress::with_draw_target(target),
            lines: !visible,
            tables: Mutex::new(HashMap::new()),
            style: ProgressStyle::with_template("{prefix:<28} [{bar:30}] {pos}/{len} tasks {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        }
    }

    fn bar(&self, table: &str) -> ProgressBar {
        let mut tables = self.tables.lock().expect("progress lock");
        tables
            .entry(table.to_string())
            .or_insert_with(|| {
                let bar = self.bars.add(ProgressBar::new(0));
                bar.set_style(self.style.clone());
                bar.set_prefix(table.to_string());
                bar
            })
            .clone()
    }
}

impl RunObserver for ProgressBars {
    fn on_event(&self, event: RunEvent) {
        match event {
            RunEvent::TablePlanned { table, tasks } => {
                self.bar(&table.to_string()).set_length(tasks as u64);
            }
            RunEvent::TaskFinished { table, .. } => self.bar(&table.to_string()).inc(1),
            RunEvent::TaskRetried {
                table,
                task_id,
                error,
            } => {
                self.bar(&table.to_string())
                    .set_message(format!("retrying {task_id}: {error}"));
            }
            RunEvent::TableFinished { report } => {
                let message = report.status.label();
                if self.lines {
                    eprintln!(
                        "{}: {message} ({} rows written, {} ms)",
                        report.table, report.metrics.rows_written, report.duration_ms
                    );
                }
                self.bar(&report.table).finish_with_message(message);
            }
        }
    }
}
