//! The pages, as HTML (maud escapes every value it is given). Each function takes what
//! [`super::console::Console`] returned and draws it; none reads anything itself.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use medallion_pipeline::report::{CheckResult, Refresh, TableReport, TableStatus};
use medallion_pipeline::spec::SourceKind;
use medallion_pipeline::{Layer, Pipeline, TableRef};
use medallion_proto::{ExecutorStatus, PipelineInfo, RunInfo, RunState};

use super::console::{Action, Viewer};
use super::graph::{self, Node, NodeState};
use super::lake::TableView;

/// The frame of every page: header, navigation, what an action said, the content.
pub fn page(title: &str, viewer: Option<&Viewer>, said: Option<&str>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Medallion" }
                link rel="stylesheet" href="/assets/ui.css";
                script src="/assets/ui.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    a.brand href="/" { "Medallion" }
                    nav aria-label="Main" {
                        a href="/" { "Pipelines" }
                        a href="/runs" { "Runs" }
                        a href="/executors" { "Executors" }
                    }
                    @if let Some(viewer) = viewer {
                        div.viewer {
                            span { (viewer.name) " (" (format!("{:?}", viewer.role).to_lowercase()) ")" }
                            @if viewer.token.is_some() {
                                form method="post" action="/logout" {
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main {
                    @if let Some(said) = said {
                        p.said role="status" { (said) }
                    }
                    (content)
                }
            }
        }
    }
}

/// The sign-in form: a token of the token file, or a JSON Web Token.
pub fn login(why: &str) -> Markup {
    html! {
        h1 { "Sign in" }
        p { (why) }
        form.login method="post" action="/login" {
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
        p.hint { "A token from " code { "medallion token new" } " or your identity provider. \
                  It is kept in a cookie only this site's pages send back." }
    }
}

pub fn error(message: &str) -> Markup {
    html! {
        h1 { "Something is wrong" }
        p.error role="alert" { (message) }
    }
}

/// Every pipeline: schedule, state, last and next run, each table's freshness.
pub fn pipelines(viewer: &Viewer, acts: bool, pipelines: &[PipelineInfo], now: i64) -> Markup {
    html! {
        h1 { "Pipelines" }
        @if pipelines.is_empty() {
            p { "No pipeline is deployed. Deploy one with " code { "medallion schedule deploy <spec>" } "." }
        }
        @for p in pipelines {
            section.card aria-labelledby=(format!("p-{}", p.name)) {
                h2 #(format!("p-{}", p.name)) { a href=(pipeline_href(&p.name)) { (p.name) } }
                dl.facts {
                    dt { "Schedule" } dd { @if p.schedule.is_empty() { "none (runs on demand)" } @else { code { (p.schedule) } } }
                    dt { "State" } dd { @if p.paused { span.badge.paused { "paused" } } @else { "active" } }
                    dt { "Last run" } dd {
                        @if let Some(run) = &p.last_run { (run_link(run)) " " (state_badge(run.state())) " " (ago(run.submitted_ms, now)) }
                        @else { "never" }
                    }
                    dt { "Next run" } dd { @if p.next_run_ms > 0 { (when(p.next_run_ms)) } @else { "-" } }
                    @if p.backfill_pending > 0 { dt { "Backfill" } dd { (p.backfill_pending) " runs to go" } }
                    @if !p.tags.is_empty() { dt { "Tags" } dd { (p.tags.join(", ")) } }
                }
                (actions_for_pipeline(viewer, acts, p))
                (region("Table freshness", html! {
                    table {
                        caption { "Freshness of " (p.name) "'s tables" }
                        (head(&["Table", "Version", "Committed"]))
                        tbody {
                            @for t in &p.tables {
                                tr {
                                    th scope="row" { a href=(table_href(&p.name, &t.table, None)) { (t.table) } }
                                    @if t.committed_ms > 0 {
                                        td { (t.version) } td { (ago(t.committed_ms, now)) }
                                    } @else { td { "-" } td { "never" } }
                                }
                            }
                        }
                    }
                }))
            }
        }
    }
}

/// Buttons for what the viewer may do to a pipeline.
fn actions_for_pipeline(viewer: &Viewer, acts: bool, p: &PipelineInfo) -> Markup {
    let name = p.name.clone();
    let trigger = Action::Trigger {
        pipeline: name.clone(),
    };
    let pause = if p.paused {
        Action::Resume {
            pipeline: name.clone(),
        }
    } else {
        Action::Pause {
            pipeline: name.clone(),
        }
    };
    let backfill = Action::Backfill {
        pipeline: name.clone(),
        from: String::new(),
        to: String::new(),
    };
    if !acts || !viewer.may(&trigger) {
        return html! {};
    }
    html! {
        div.actions {
            (action_button(&trigger, "Trigger a run", &pipeline_href(&name)))
            @if viewer.may(&pause) {
                (action_button(&pause, if p.paused { "Resume" } else { "Pause" }, "/"))
            }
            @if viewer.may(&backfill) && !p.schedule.is_empty() {
                form.backfill method="post" action="/actions" {
                    input type="hidden" name="action" value="backfill";
                    input type="hidden" name="pipeline" value=(name);
                    input type="hidden" name="back" value="/";
                    label { "From " input type="date" name="from" required; }
                    label { "to " input type="date" name="to" required; }
                    button type="submit" { "Backfill" }
                }
            }
        }
    }
}

fn action_button(action: &Action, label: &str, back: &str) -> Markup {
    let (kind, pipeline, run_id) = match action {
        Action::Trigger { pipeline } => ("trigger", pipeline.as_str(), ""),
        Action::Pause { pipeline } => ("pause", pipeline.as_str(), ""),
        Action::Resume { pipeline } => ("resume", pipeline.as_str(), ""),
        Action::Cancel { run_id } => ("cancel", "", run_id.as_str()),
        Action::Backfill { pipeline, .. } => ("backfill", pipeline.as_str(), ""),
    };
    html! {
        form method="post" action="/actions" {
            input type="hidden" name="action" value=(kind);
            input type="hidden" name="pipeline" value=(pipeline);
            input type="hidden" name="run_id" value=(run_id);
            input type="hidden" name="back" value=(back);
            button type="submit" data-action=(kind) { (label) }
        }
    }
}

/// The state of every table of `pipeline` after `run` (or, where it did not commit in it,
/// as `freshness` says), for the graph and the table list.
pub struct TableState<'a> {
    pub table: TableRef,
    pub report: Option<&'a TableReport>,
    pub version: Option<u64>,
    pub committed_ms: i64,
    pub rows: Option<u64>,
}

/// What a pipeline's page shows.
pub struct PipelineView<'a> {
    pub info: &'a PipelineInfo,
    pub pipeline: &'a Pipeline,
    /// In the DAG's order.
    pub tables: &'a [TableState<'a>],
    /// Whether the latest run still runs (its unfinished tables are shown running).
    pub running: bool,
    /// The pipeline's latest runs, newest first.
    pub runs: &'a [RunInfo],
}

/// A pipeline: its graph, its tables, its latest runs.
pub fn pipeline(viewer: &Viewer, acts: bool, view: &PipelineView, now: i64) -> Markup {
    let PipelineView {
        info,
        pipeline,
        tables,
        running,
        runs,
    } = *view;
    let (nodes, edges) = graph_of(pipeline, tables, running, now);
    html! {
        h1 { "Pipeline " (info.name) }
        @if let Some(description) = &pipeline.spec.description { p { (description) } }
        (actions_for_pipeline(viewer, acts, info))
        h2 { "Graph" }
        (region("Pipeline graph", graph::svg(&nodes, &edges)))
        h2 { "Tables" }
        (region("Tables", html! {
            table #tables {
                (head(&["Table", "State", "Version", "Rows", "Committed", "Checks"]))
                tbody {
                    @for t in tables {
                        @let name = t.table.to_string();
                        tr data-table=(name) {
                            th scope="row" { a href=(table_href(&info.name, &name, None)) { (name) } }
                            td { (table_state_badge(t, running)) }
                            td { (t.version.map(|v| v.to_string()).unwrap_or("-".into())) }
                            td { (t.rows.map(thousands).unwrap_or("-".into())) }
                            td { @if t.committed_ms > 0 { (ago(t.committed_ms, now)) } @else { "never" } }
                            td { (checks_summary(pipeline, t)) }
                        }
                    }
                }
            }
        }))
        h2 { "Latest runs" }
        (runs_table(runs, now))
    }
}

/// The graph's nodes and edges: each source, then each table, edges from what is read to
/// what reads it.
fn graph_of(
    pipeline: &Pipeline,
    tables: &[TableState],
    running: bool,
    now: i64,
) -> (Vec<Node>, Vec<(usize, usize)>) {
    let name = pipeline.name();
    let mut nodes: Vec<Node> = pipeline
        .spec
        .sources
        .iter()
        .map(|s| Node {
            id: format!("source:{}", s.name.value),
            title: format!("source {}", s.name.value),
            lines: match s.kind() {
                SourceKind::Files(format) => {
                    vec![format!("{format:?}").to_lowercase(), s.path().to_string()]
                }
                SourceKind::Http(http) => vec!["http".to_string(), http.url.value.clone()],
                SourceKind::Postgres(pg) => vec![
                    "postgres".to_string(),
                    pg.table
                        .as_ref()
                        .map_or_else(|| "query".to_string(), |t| t.value.clone()),
                ],
                SourceKind::Kafka(kafka) => vec!["kafka".to_string(), kafka.topic.value.clone()],
            },
            state: NodeState::None,
            href: None,
        })
        .collect();
    let sources = nodes.len();
    for t in tables {
        let mut lines = Vec::new();
        match (t.version, t.rows) {
            (Some(v), Some(rows)) => lines.push(format!("v{v} · {} rows", thousands(rows))),
            (Some(v), None) => lines.push(format!("v{v}")),
            _ => lines.push("not committed yet".into()),
        }
        if t.committed_ms > 0 {
            lines.push(format!("committed {} ago", duration(now - t.committed_ms)));
        }
        let checks = pipeline.checks(&t.table).len();
        if checks > 0 {
            let failed = t
                .report
                .map_or(0, |r| r.checks.iter().filter(|c| !c.passed).count());
            let noun = if checks == 1 { "check" } else { "checks" };
            lines.push(match (t.report, failed) {
                (None, _) => format!("{checks} {noun}"),
                (Some(_), 0) => format!("{checks} {noun} passed"),
                (Some(_), n) => format!("{n} of {checks} {noun} failed"),
            });
        }
        let table = t.table.to_string();
        nodes.push(Node {
            href: Some(table_href(name, &table, None)),
            id: table.clone(),
            title: table,
            lines,
            state: node_state(t, running),
        });
    }
    let index = |table: &TableRef| {
        tables
            .iter()
            .position(|t| &t.table == table)
            .map(|i| i + sources)
    };
    let mut edges = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        if t.table.layer == Layer::Bronze
            && let Some(bronze) = pipeline.bronze(&t.table.name)
            && let Some(source) = pipeline
                .spec
                .sources
                .iter()
                .position(|s| s.name.value == bronze.source.value)
        {
            edges.push((source, i + sources));
        }
        for input in pipeline.dag.deps(&t.table) {
            if let Some(from) = index(input) {
                edges.push((from, i + sources));
            }
        }
    }
    (nodes, edges)
}

fn node_state(t: &TableState, running: bool) -> NodeState {
    match t.report.map(|r| &r.status) {
        Some(TableStatus::Failed { .. }) => NodeState::Failed,
        Some(TableStatus::Skipped { .. }) => NodeState::Skipped,
        Some(_) if t.report.is_some_and(|r| r.checks.iter().any(|c| !c.passed)) => {
            NodeState::Warned
        }
        Some(_) => NodeState::Ok,
        None if running => NodeState::Running,
        None if t.version.is_some() => NodeState::Ok,
        None => NodeState::None,
    }
}

fn table_state_badge(t: &TableState, running: bool) -> Markup {
    let state = node_state(t, running);
    let word = match t.report.map(|r| &r.status) {
        Some(status) => status.label(),
        None if running => "waiting or running".into(),
        None => "-".into(),
    };
    html! { span class=(format!("badge {}", state.class())) { (word) } }
}

fn checks_summary(pipeline: &Pipeline, t: &TableState) -> Markup {
    let declared = pipeline.checks(&t.table);
    if declared.is_empty() {
        return html! { "none" };
    }
    let names: Vec<&str> = declared.iter().map(|c| c.name.value.as_str()).collect();
    let failed: Vec<&CheckResult> = t.report.map_or(Vec::new(), |r| {
        r.checks.iter().filter(|c| !c.passed).collect()
    });
    html! {
        @if failed.is_empty() { (names.join(", ")) }
        @else {
            @for c in failed { span.badge.failed { (c.name) " failed" } " " }
        }
    }
}

/// A run: what it is, then each table as it finished, on a timeline.
pub fn run(
    viewer: &Viewer,
    acts: bool,
    run: &RunInfo,
    pipeline: Option<&Pipeline>,
    now: i64,
) -> Markup {
    let live = matches!(run.state(), RunState::Queued | RunState::Running);
    html! {
        h1 { "Run " (run.run_id) }
        div #run-live data-live=(format!("{}/live", run_href(&run.run_id))) data-running=(live) aria-live="polite" {
            (run_body(viewer, acts, run, pipeline, now))
        }
    }
}

/// The part of a run's page that changes while it runs (fetched again every second).
pub fn run_body(
    viewer: &Viewer,
    acts: bool,
    run: &RunInfo,
    pipeline: Option<&Pipeline>,
    now: i64,
) -> Markup {
    let state = run.state();
    let live = matches!(state, RunState::Queued | RunState::Running);
    let mut tables = run.tables();
    // Skipped tables never started: after the others.
    tables.sort_by_key(|t| {
        (
            matches!(t.status, TableStatus::Skipped { .. }),
            t.started_ms,
        )
    });
    let finished: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
    let waiting: Vec<String> = pipeline
        .filter(|_| live)
        .and_then(|p| p.dag.topological_order().ok())
        .unwrap_or_default()
        .into_iter()
        .map(|t| t.to_string())
        .filter(|t| !finished.contains(&t.as_str()))
        .collect();
    let span = tables
        .iter()
        .map(|t| t.started_ms + t.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let cancel = Action::Cancel {
        run_id: run.run_id.clone(),
    };
    html! {
        dl.facts {
            dt { "Pipeline" } dd { a href=(pipeline_href(&run.pipeline)) { (run.pipeline) } }
            dt { "State" } dd { (state_badge(state)) }
            dt { "Trigger" } dd { (if run.trigger.is_empty() { "manual" } else { &run.trigger }) }
            @if !run.ds.is_empty() { dt { "Logical date" } dd { (run.ds) } }
            dt { "Started" } dd { (when(run.submitted_ms)) }
            dt { "Duration" } dd {
                @if run.ended_ms > 0 { (duration(run.ended_ms - run.submitted_ms)) }
                @else { (duration(now - run.submitted_ms)) " so far" }
            }
        }
        @if !run.message.is_empty() && state != RunState::Succeeded {
            p.error role="alert" { (run.message) }
        }
        @if live && acts && viewer.may(&cancel) {
            div.actions { (action_button(&cancel, "Cancel the run", &run_href(&run.run_id))) }
        }
        h2 { "Tables" }
        (region("Run timeline", html! {
            table.timeline {
                (head(&["Table", "Result", "Timeline", "Duration", "Tasks", "Rows read", "Rows written", "How"]))
                tbody {
                    @for t in &tables {
                        tr data-table=(t.table) data-status=(status_word(&t.status)) {
                            th scope="row" { a href=(table_href(&run.pipeline, &t.table, committed_version(t))) { (t.table) } }
                            td { (status_badge(&t.status)) }
                            td.bar {
                                span.bar style=(format!("margin-left:{:.1}%;width:{:.1}%",
                                    100.0 * t.started_ms as f64 / span as f64,
                                    (100.0 * t.duration_ms as f64 / span as f64).max(0.5))) {}
                            }
                            td { (duration(t.duration_ms as i64)) }
                            td { (t.tasks) @if t.retries > 0 { " (" (t.retries) " retried)" } }
                            td { (thousands(t.metrics.rows_read)) }
                            td { (thousands(t.metrics.rows_written)) }
                            td.how { (how(t)) }
                        }
                    }
                    @for t in &waiting {
                        tr data-table=(t) data-status="waiting" {
                            th scope="row" { (t) }
                            td { span.badge.running { "waiting or running" } }
                            td {} td {} td {} td {} td {} td {}
                        }
                    }
                }
            }
        }))
        @let with_tasks: Vec<&TableReport> = tables.iter().filter(|t| !t.task_runs.is_empty()).collect();
        @if !with_tasks.is_empty() {
            h2 { "Tasks" }
            @for t in with_tasks {
                details.tasks data-table=(t.table) {
                    summary { (t.table) ": " (t.task_runs.len()) " tasks" }
                    (region(&format!("Tasks of {}", t.table), html! {
                        table {
                            (head(&["Task", "Executor", "Attempts", "Started", "Duration", "Rows read", "Rows written", "Error"]))
                            tbody { @for task in &t.task_runs {
                                tr {
                                    th scope="row" { (task.task_id) }
                                    td { (task.executor) }
                                    td { (task.attempts) }
                                    td { "+" (duration(task.started_ms as i64)) }
                                    td { (duration(task.duration_ms as i64)) }
                                    td { (thousands(task.rows_read)) }
                                    td { (thousands(task.rows_written)) }
                                    td { (task.error.as_deref().unwrap_or("")) }
                                }
                            } }
                        }
                    }))
                }
            }
        }
        @let failures: Vec<(&TableReport, &str)> = tables.iter().filter_map(|t| match &t.status {
            TableStatus::Failed { error } => Some((t, error.as_str())),
            TableStatus::Skipped { reason } => Some((t, reason.as_str())),
            _ => None,
        }).collect();
        @if !failures.is_empty() {
            h2 { "Errors" }
            @for (t, error) in failures {
                section.failure data-table=(t.table) {
                    h3 { (t.table) }
                    pre.error { (error) }
                }
            }
        }
        @let checked: Vec<&TableReport> = tables.iter().filter(|t| !t.checks.is_empty()).collect();
        @if !checked.is_empty() {
            h2 { "Quality" }
            (region("Quality checks", html! {
                table.checks {
                    (head(&["Table", "Check", "Severity", "Result", "Failing rows", "Detail"]))
                    tbody {
                        @for t in checked { @for c in &t.checks {
                            tr {
                                th scope="row" { (t.table) }
                                td { (c.name) }
                                td { (format!("{:?}", c.severity).to_lowercase()) }
                                td { @if c.passed { span.badge.ok { "passed" } } @else { span.badge.failed { "failed (" (format!("{:?}", c.action).to_lowercase()) ")" } } }
                                td { (thousands(c.failing_rows)) " of " (thousands(c.total_rows)) }
                                td { (c.detail.as_deref().unwrap_or("")) }
                            }
                        } }
                    }
                }
            }))
        }
    }
}

/// How a table was computed: versions written and read, refresh kind, engine, rows aside.
fn how(t: &TableReport) -> Markup {
    let m = &t.metrics;
    html! {
        @if let TableStatus::Committed { version } = t.status { "wrote v" (version) ". " }
        @match &t.refresh {
            Some(Refresh::Incremental { after_version }) => { "read changes after v" (after_version) ". " }
            Some(Refresh::Full { reason }) => { "full: " (reason) ". " }
            None => {}
        }
        @if let Some(engine) = t.engine { (format!("{engine:?}").to_lowercase()) ". " }
        @if m.files_read > 0 { (m.files_read) " files. " }
        @if m.rows_rescued > 0 { (thousands(m.rows_rescued)) " rescued. " }
        @if m.rows_quarantined > 0 { (thousands(m.rows_quarantined)) " quarantined. " }
        @if m.rows_dropped > 0 { (thousands(m.rows_dropped)) " dropped. " }
    }
}

fn committed_version(t: &TableReport) -> Option<u64> {
    match t.status {
        TableStatus::Committed { version } => Some(version),
        _ => None,
    }
}

/// The runs, newest first.
pub fn runs(runs: &[RunInfo], now: i64) -> Markup {
    html! {
        h1 { "Runs" }
        (runs_table(runs, now))
    }
}

fn runs_table(runs: &[RunInfo], now: i64) -> Markup {
    html! {
        @if runs.is_empty() { p { "No runs yet." } }
        @else {
            (region("Runs", html! {
                table #runs {
                    (head(&["Run", "Pipeline", "State", "Trigger", "Started", "Duration"]))
                    tbody {
                        @for r in runs {
                            tr data-run=(r.run_id) data-state=(state_word(r.state())) {
                                th scope="row" { (run_link(r)) }
                                td { a href=(pipeline_href(&r.pipeline)) { (r.pipeline) } }
                                td { (state_badge(r.state())) }
                                td { (r.trigger) }
                                td { (ago(r.submitted_ms, now)) }
                                td { @if r.ended_ms > 0 { (duration(r.ended_ms - r.submitted_ms)) } @else { "running" } }
                            }
                        }
                    }
                }
            }))
        }
    }
}

/// A table: schema, history, rows at a version, its checks over time.
pub fn table(pipeline: &str, table: &str, view: &TableView, now: i64) -> Markup {
    html! {
        h1 { (table) }
        p { "In " a href=(pipeline_href(pipeline)) { (pipeline) } "." }
        @match (view.version, view.latest) {
            (None, _) => { p { "Nothing was committed to this table yet." } }
            (Some(v), Some(latest)) => {
                p #version { "Version " strong { (v) } @if v == latest { " (latest)" } @else {
                    " of " (latest) ". " a href=(table_href(pipeline, table, None)) { "Latest" } } ", " (thousands(view.rows)) " rows." }
            }
            (Some(v), None) => { p { "Version " (v) } }
        }
        @if !view.columns.is_empty() {
            h2 { "Schema" }
            (region("Schema", html! {
                table #schema {
                    (head(&["Column", "Type", "Nullable"]))
                    tbody { @for (name, kind, nullable) in &view.columns {
                        tr { th scope="row" { (name) } td { code { (kind) } } td { (if *nullable { "yes" } else { "no" }) } }
                    } }
                }
            }))
            h2 { "Rows" }
            p { "The first " (view.preview.1.len()) " rows at version " (view.version.unwrap_or(0)) "." }
            (region("Rows", html! {
                table #preview {
                    thead { tr { @for c in &view.preview.0 { th scope="col" { (c) } } } }
                    tbody { @for row in &view.preview.1 { tr { @for v in row { td { (v) } } } } }
                }
            }))
            h2 { "History" }
            (region("History", html! {
                table #history {
                    (head(&["Version", "Operation", "Run", "When", "Rows added", "Rows removed", "Read"]))
                    tbody { @for v in &view.history {
                        tr {
                            th scope="row" { a href=(table_href(pipeline, table, Some(v.version))) { (v.version) } }
                            td { (v.operation) }
                            td { @if let Some(run) = &v.run_id { a href=(run_href(run)) { (run) } } }
                            td { (v.timestamp.map(|t| ago(t, now)).unwrap_or_default()) }
                            td { (thousands(v.rows_added)) }
                            td { (thousands(v.rows_removed)) }
                            td.read {
                                @for (i, (input, at)) in v.inputs.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    a href=(table_href(pipeline, input, Some(*at))) { (input) " v" (at) }
                                }
                            }
                        }
                    } }
                }
            }))
        }
        h2 { "Checks over time" }
        @if view.checks.is_empty() { p { "No check results recorded." } }
        @else {
            (region("Checks over time", html! {
                table #checks {
                    (head(&["When", "Check", "Severity", "Result", "Failing rows", "Run"]))
                    tbody { @for c in &view.checks {
                        tr {
                            th scope="row" { (when(c.checked_at_ms)) }
                            td { (c.check) }
                            td { (c.severity) }
                            td { @if c.passed { span.badge.ok { "passed" } } @else { span.badge.failed { "failed" } } }
                            td { (thousands(c.rows_failed)) " of " (thousands(c.rows_checked)) }
                            td { a href=(run_href(&c.run_id)) { (c.run_id) } }
                        }
                    } }
                }
            }))
        }
    }
}

/// The executors: each one's slots and tasks running.
pub fn executors(executors: Option<&[ExecutorStatus]>, now: i64) -> Markup {
    html! {
        h1 { "Executors" }
        @match executors {
            None => { p { "Embedded mode: tasks run in the process that runs the pipeline." } }
            Some([]) => { p { "No executor is registered." } }
            Some(executors) => {
                @let slots: u32 = executors.iter().map(|e| e.info.as_ref().map_or(0, |i| i.slots)).sum();
                @let running: u32 = executors.iter().map(|e| e.running).sum();
                p { (executors.len()) " executors, " (running) " of " (slots) " slots busy." }
                (region("Executors", html! {
                    table #executors {
                        (head(&["Executor", "Address", "Slots", "Tasks running", "Memory pool", "Up since"]))
                        tbody { @for e in executors {
                            @let info = e.info.clone().unwrap_or_default();
                            tr {
                                th scope="row" { (info.id) }
                                td { code { (info.address) } }
                                td { (info.slots) }
                                td { (e.running) }
                                td { @if info.memory_limit > 0 { (bytes(info.memory_limit)) } @else { "unbounded" } }
                                td { (ago(info.started_ms, now)) }
                            }
                        } }
                    }
                }))
            }
        }
    }
}

/// A table's header row: its column names.
fn head(columns: &[&str]) -> Markup {
    html! { thead { tr { @for c in columns { th scope="col" { (c) } } } } }
}

/// A scrollable, labelled region (wide tables on a phone scroll inside it).
fn region(label: &str, content: Markup) -> Markup {
    html! { div.scroll role="region" aria-label=(label) tabindex="0" { (content) } }
}

pub fn pipeline_href(name: &str) -> String {
    format!("/pipelines/{}", encode(name))
}

pub fn run_href(run_id: &str) -> String {
    format!("/runs/{}", encode(run_id))
}

fn table_href(pipeline: &str, table: &str, version: Option<u64>) -> String {
    let at = version.map(|v| format!("?version={v}")).unwrap_or_default();
    format!("{}/tables/{}{at}", pipeline_href(pipeline), encode(table))
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, SEGMENT).to_string()
}

fn run_link(run: &RunInfo) -> Markup {
    html! { a href=(run_href(&run.run_id)) { (run.run_id) } }
}

/// A run's state in a word (`succeeded`).
pub fn state_word(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "queued",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
        RunState::Unspecified => "unknown",
    }
}

fn state_badge(state: RunState) -> Markup {
    let class = match state {
        RunState::Succeeded => "ok",
        RunState::Failed => "failed",
        RunState::Queued | RunState::Running => "running",
        RunState::Cancelled | RunState::Unspecified => "skipped",
    };
    html! { span class=(format!("badge {class}")) data-state=(state_word(state)) { (state_word(state)) } }
}

fn status_word(status: &TableStatus) -> &'static str {
    match status {
        TableStatus::Committed { .. } => "committed",
        TableStatus::UpToDate => "up_to_date",
        TableStatus::Failed { .. } => "failed",
        TableStatus::Skipped { .. } => "skipped",
        TableStatus::Kept { .. } => "kept",
    }
}

fn status_badge(status: &TableStatus) -> Markup {
    let class = match status {
        TableStatus::Failed { .. } => "failed",
        TableStatus::Skipped { .. } => "skipped",
        _ => "ok",
    };
    html! { span class=(format!("badge {class}")) { (status.label()) } }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units (`1.5 GiB`).
fn bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", units[unit]),
    }
}

fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// A time in UTC, as a `<time>` element.
fn when(ms: i64) -> Markup {
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// How long ago, with the exact time on hover.
fn ago(ms: i64, now: i64) -> Markup {
    let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    let age = (now - ms).max(0);
    html! { time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M:%S UTC")) { (duration(age)) " ago" } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(100), "100");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(duration(950), "950 ms");
        assert_eq!(duration(12_300), "12.3 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(7_500_000), "2 h 5 min");
    }

    #[test]
    fn names_in_links_are_encoded_and_values_escaped() {
        assert_eq!(
            table_href("a b", "gold.x", Some(3)),
            "/pipelines/a%20b/tables/gold.x?version=3"
        );
        let viewer = Viewer {
            name: "<script>".into(),
            role: crate::auth::AccessRole::Viewer,
            token: None,
        };
        let html = page("t", Some(&viewer), Some("<b>"), html! {}).into_string();
        assert!(
            !html.contains("<script>") && html.contains("&lt;script&gt;"),
            "{html}"
        );
        assert!(html.contains("&lt;b&gt;"));
    }
}
