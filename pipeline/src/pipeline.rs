//! A loaded, validated pipeline: the spec plus everything resolved from it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::Spanned;

use crate::confine::Confinement;
use crate::dag::{Dag, Layer, TableRef};
use crate::error::{Errors, SpecError, SpecErrors};
use crate::retry::RetryPolicy;
use crate::schedule::{RunInterval, Schedule, ScheduleError};
use crate::spec::*;
use crate::{sql, types};

/// A validated pipeline. Only [`Pipeline::parse`] makes one, so holding one means the spec
/// passed every check.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub spec: PipelineSpec,
    /// The spec text, shipped to executors so they see exactly what was validated.
    pub yaml: String,
    /// Where the spec came from, for messages.
    pub origin: String,
    /// Relative source paths and the lake root are resolved against this directory.
    pub base_dir: PathBuf,
    /// The lake root as a URL (`file:///...`, `s3://...`).
    pub lake_root: String,
    pub storage_options: BTreeMap<String, String>,
    pub dag: Dag,
    /// The run's logical interval; templated fields were rendered for it.
    pub interval: RunInterval,
    /// Each source's path as written, when it was a template.
    source_templates: Vec<Option<String>>,
    /// Where a coordinator that admitted the pipeline lets it read and write.
    pub(crate) confinement: Option<Arc<Confinement>>,
}

/// Which interval a parsed pipeline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDate {
    /// The latest interval of its schedule that has ended (today, without a schedule).
    Latest,
    /// The interval of a logical date: the schedule's first on or after that day, or the day.
    Date(chrono::NaiveDate),
    /// Exactly this interval (as decided by the process that sent the spec).
    Interval {
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
    },
}

impl Pipeline {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Pipeline, SpecErrors> {
        Self::load_for(path, RunDate::Latest)
    }

    /// Reads and validates a spec file for the run of `date`.
    pub fn load_for(path: &Path, date: RunDate) -> Result<Pipeline, SpecErrors> {
        let origin = path.display().to_string();
        let yaml = read_spec(path).map_err(|message| {
            SpecErrors(vec![SpecError {
                file: origin.clone(),
                line: 0,
                column: 0,
                field: String::new(),
                message,
            }])
        })?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Pipeline::parse_for(yaml, origin, base, date)
    }

    /// Parses and validates spec text; `origin` names it in errors, and relative paths in the
    /// spec are resolved against `base_dir`.
    ///
    /// ```
    /// use medallion_pipeline::{Layer, Pipeline, TableRef};
    ///
    /// let yaml = r#"
    /// pipeline: shop
    /// lake: lake
    /// sources:
    ///   - { name: api, format: json, path: raw/*.jsonl }
    /// bronze:
    ///   - { name: orders, source: api }
    /// silver:
    ///   - name: orders
    ///     from: bronze.orders
    ///     keys: [order_id]
    ///     columns: [{ name: order_id, type: bigint }, { name: status }]
    /// "#;
    /// let p = Pipeline::parse(yaml.into(), "shop.yaml".into(), "/data".into()).unwrap();
    /// assert_eq!(p.name(), "shop");
    /// let silver = TableRef::new(Layer::Silver, "orders");
    /// let bronze = TableRef::new(Layer::Bronze, "orders");
    /// assert!(p.dag.deps(&silver).contains(&bronze));
    /// assert_eq!(p.table_uri(&silver), "/data/lake/silver/orders");
    /// ```
    ///
    /// Every problem is reported at once, each with its file, line and field:
    ///
    /// ```
    /// use medallion_pipeline::Pipeline;
    ///
    /// let yaml = r#"
    /// pipeline: shop
    /// lake: lake
    /// sources:
    ///   - { name: api, format: json, path: raw/*.jsonl }
    /// bronze:
    ///   - { name: orders, source: nowhere }
    ///   - { name: orders, source: api }
    /// "#;
    /// let errors = Pipeline::parse(yaml.into(), "shop.yaml".into(), "/data".into()).unwrap_err();
    /// assert_eq!(errors.0.len(), 2, "{errors}");
    /// let unknown = errors.0.iter().find(|e| e.field == "bronze[0].source").unwrap();
    /// assert_eq!((unknown.file.as_str(), unknown.line), ("shop.yaml", 7));
    /// assert!(unknown.message.contains("nowhere"), "{unknown}");
    /// assert!(errors.to_string().contains("shop.yaml:8"), "{errors}");
    /// ```
    pub fn parse(yaml: String, origin: String, base_dir: PathBuf) -> Result<Pipeline, SpecErrors> {
        Self::parse_for(yaml, origin, base_dir, RunDate::Latest)
    }

    /// [`Pipeline::parse`] for the run of `date`: templated fields (`{{ ds }}`) are rendered
    /// for its interval before they are validated.
    pub fn parse_for(
        yaml: String,
        origin: String,
        base_dir: PathBuf,
        date: RunDate,
    ) -> Result<Pipeline, SpecErrors> {
        // The path of the field being read when parsing fails (`retries.max_attempts`), so an
        // error names it even when the YAML parser's message does not.
        let mut field = String::new();
        let parsed = serde_saphyr::with_deserializer_from_str(&yaml, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                field = e.path().to_string();
                e.into_inner()
            })
        });
        let spec: PipelineSpec = parsed.map_err(|e| {
            let loc = e.location().unwrap_or(serde_saphyr::Location::UNKNOWN);
            SpecErrors(vec![SpecError {
                file: origin.clone(),
                line: loc.line(),
                column: loc.column(),
                field: if field == "." { String::new() } else { field },
                message: first_line(&e.to_string()),
            }])
        })?;
        let mut spec: PipelineSpec = spec;
        let mut errors = Errors::new(&origin);
        let interval = run_interval(&spec, date, &mut errors);
        let source_templates = crate::template::render(&mut spec, &interval, &mut errors);
        let dag = validate(&spec, &mut errors);
        if !errors.found.is_empty() {
            return Err(SpecErrors(errors.found));
        }
        let (root, storage_options) = match &spec.lake.value {
            LakeSpec::Root(r) => (r.value.clone(), BTreeMap::new()),
            LakeSpec::Detailed {
                root,
                storage_options,
            } => (root.value.clone(), storage_options.clone()),
        };
        let lake_root = resolve_location(&base_dir, &root);
        if let Some(message) = system_directory(&lake_root) {
            errors.on(&spec.lake, "lake", message);
            return Err(SpecErrors(errors.found));
        }
        Ok(Pipeline {
            spec,
            yaml,
            origin,
            base_dir,
            lake_root,
            storage_options,
            dag,
            interval,
            source_templates,
            confinement: None,
        })
    }

    /// The confinement of the coordinator that admitted the pipeline, if any.
    pub fn confinement(&self) -> Option<&Confinement> {
        self.confinement.as_deref()
    }

    /// The pipeline's schedule, if it has one.
    pub fn schedule(&self) -> Option<Schedule> {
        let schedule = self.spec.schedule.as_ref()?;
        resolve_schedule(&schedule.value).ok()
    }

    /// How the tasks of `table` are retried and how long an attempt may take.
    pub fn retry_policy(&self, table: &TableRef) -> RetryPolicy {
        let (retries, timeout) = match table.layer {
            Layer::Bronze => self.bronze(&table.name).map(|t| (&t.retries, &t.timeout)),
            Layer::Silver => self.silver(&table.name).map(|t| (&t.retries, &t.timeout)),
            Layer::Gold => self.gold(&table.name).map(|t| (&t.retries, &t.timeout)),
        }
        .unwrap_or((&None, &None));
        let timeout = parse_timeout(timeout.as_ref()).unwrap_or(self.spec.timeouts.task());
        RetryPolicy::resolve(&self.spec.retries, retries.as_ref(), timeout)
    }

    /// The path a source's file identities are relative to, when its path is a template
    /// (`data/{{ ds }}/*.jsonl` -> `<base>/data`): runs of different intervals must not
    /// take each other's files for their own.
    pub fn source_root_template(&self, source: &SourceSpec) -> Option<String> {
        let i = self
            .spec
            .sources
            .iter()
            .position(|s| s.name == source.name)?;
        let written = self.source_templates.get(i)?.as_ref()?;
        let location = resolve_location(&self.base_dir, written);
        let fixed: Vec<&str> = location
            .split('/')
            .take_while(|c| !c.contains("{{") && !c.contains("{%") && !c.contains(['*', '?', '[']))
            .collect();
        Some(fixed.join("/"))
    }

    pub fn name(&self) -> &str {
        &self.spec.pipeline.value
    }

    /// Where a table's Delta log lives: `<lake root>/<layer>/<name>`.
    pub fn table_uri(&self, table: &TableRef) -> String {
        format!(
            "{}/{}/{}",
            self.lake_root.trim_end_matches('/'),
            table.layer,
            table.name
        )
    }

    /// Where rows failing a table's `quarantine` checks are kept: `<table>__quarantine`, next
    /// to the table; `None` when no check of the table quarantines.
    pub fn quarantine_table(&self, table: &TableRef) -> Option<TableRef> {
        let quarantines = self
            .checks(table)
            .iter()
            .any(|c| c.action() == crate::spec::Action::Quarantine);
        quarantines
            .then(|| TableRef::new(table.layer, format!("{}{QUARANTINE_SUFFIX}", table.name)))
    }

    /// The Delta table every run appends its quality check results to, for users to query.
    pub fn check_results_uri(&self) -> String {
        format!(
            "{}/_medallion/check_results",
            self.lake_root.trim_end_matches('/')
        )
    }

    /// The Delta table every run appends a summary row to when it ends: the run history
    /// that outlives the cluster's run records (pruned from etcd after a retention).
    pub fn run_history_uri(&self) -> String {
        format!("{}/_medallion/runs", self.lake_root.trim_end_matches('/'))
    }

    /// The lake's storage options as deltalake and object_store take them.
    pub fn lake_options(&self) -> HashMap<String, String> {
        self.storage_options.clone().into_iter().collect()
    }

    /// The Delta table every successful run appends the versions of all the pipeline's tables
    /// to: what `medallion sql --snapshot <run>` reads them at.
    pub fn snapshots_uri(&self) -> String {
        format!(
            "{}/_medallion/snapshots",
            self.lake_root.trim_end_matches('/')
        )
    }

    /// Scratch space for staged files that are not table data yet (merge sources).
    pub fn staging_uri(&self, run_id: &str, table: &TableRef) -> String {
        format!(
            "{}/_medallion/staging/{run_id}/{}/{}",
            self.lake_root.trim_end_matches('/'),
            table.layer,
            table.name
        )
    }

    pub fn source(&self, name: &str) -> Option<&SourceSpec> {
        self.spec.sources.iter().find(|s| s.name.value == name)
    }

    pub fn bronze(&self, name: &str) -> Option<&BronzeSpec> {
        self.spec.bronze.iter().find(|t| t.name.value == name)
    }

    pub fn silver(&self, name: &str) -> Option<&SilverSpec> {
        self.spec.silver.iter().find(|t| t.name.value == name)
    }

    pub fn gold(&self, name: &str) -> Option<&GoldSpec> {
        self.spec.gold.iter().find(|t| t.name.value == name)
    }

    /// The columns no two rows of `table` share the values of: a silver table's `keys`, on
    /// which its rows are deduplicated and merged; none for a type 2 CDC table (a row per
    /// version of a key) or a table without keys.
    pub fn unique_key(&self, table: &TableRef) -> Option<Vec<&str>> {
        let silver = self
            .silver(&table.name)
            .filter(|_| table.layer == Layer::Silver)?;
        let keys = silver
            .keys
            .iter()
            .map(|k| k.value.as_str())
            .collect::<Vec<_>>();
        (!keys.is_empty() && silver.scd_type() != Some(2)).then_some(keys)
    }

    /// The quality checks declared on a table.
    pub fn checks(&self, table: &TableRef) -> &[CheckSpec] {
        let checks = match table.layer {
            Layer::Bronze => self.bronze(&table.name).map(|t| &t.checks),
            Layer::Silver => self.silver(&table.name).map(|t| &t.checks),
            Layer::Gold => self.gold(&table.name).map(|t| &t.checks),
        };
        checks.map(Vec::as_slice).unwrap_or_default()
    }

    /// The spec as canonical JSON without where things are (the lake's root and storage
    /// options, the sources' paths) and without what does not change rows (`maintenance:`):
    /// what decides how tables are computed. Moving a lake with its sources, or pointing a
    /// source at another copy of its files, leaves it unchanged.
    pub fn computation(&self) -> String {
        let mut spec: serde_json::Value =
            serde_saphyr::from_str(&self.yaml).unwrap_or(serde_json::Value::Null);
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("lake");
            spec.remove("maintenance");
            let sources = spec.get_mut("sources").and_then(|s| s.as_array_mut());
            for source in sources.into_iter().flatten() {
                if let Some(source) = source.as_object_mut() {
                    source.remove("path");
                }
            }
        }
        spec.to_string()
    }

    /// Whether a table records its changes in Delta's change data feed.
    pub fn change_data_feed(&self, table: &TableRef) -> bool {
        match table.layer {
            Layer::Bronze => false,
            Layer::Silver => self.silver(&table.name).is_some_and(|t| t.change_data_feed),
            Layer::Gold => self.gold(&table.name).is_some_and(|t| t.change_data_feed),
        }
    }

    /// A path written in the spec (a source's `password_file`), resolved against the spec's
    /// directory.
    pub fn spec_relative(&self, written: &str) -> String {
        resolve_location(&self.base_dir, written)
    }

    /// A source's path or glob, resolved against the spec's directory.
    pub fn source_location(&self, source: &SourceSpec) -> String {
        resolve_location(&self.base_dir, source.path())
    }

    /// The options of the store a source's objects are in: the lake's, with the source's own
    /// over them (a source usually shares the lake's endpoint and region).
    pub fn source_storage_options(&self, source: &SourceSpec) -> HashMap<String, String> {
        let lake = self.storage_options.iter();
        lake.chain(&source.storage_options)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The largest spec file read: specs are a few KiB, and a device or a huge file given by
/// mistake must not be read without end.
const MAX_SPEC_BYTES: u64 = 4 << 20;

/// Reads a spec file: a regular file of UTF-8 text, at most [`MAX_SPEC_BYTES`].
fn read_spec(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the spec: {e}"))?;
    if !meta.is_file() {
        return Err("cannot read the spec: not a regular file".into());
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!(
            "cannot read the spec: {} bytes is too large for a spec (at most 4 MiB)",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_SPEC_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the spec: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("cannot read the spec: not UTF-8 text ({e})"))
}

/// Turns a spec location into an absolute path or URL; URLs pass through unchanged.
fn resolve_location(base: &Path, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let path = Path::new(location);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    normalize(&abs).display().to_string()
}

/// Why a lake may not be at `location`: the file system's root or a directory the system
/// owns, where a run would write tables among system files.
fn system_directory(location: &str) -> Option<String> {
    const SYSTEM: [&str; 10] = [
        "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/sbin", "/sys", "/usr",
    ];
    let path = Path::new(location);
    if location.contains("://") {
        return None;
    }
    if path == Path::new("/") {
        return Some(
            "'/' is the root of the file system: give the lake a directory of its own".into(),
        );
    }
    let system = SYSTEM.iter().find(|s| path.starts_with(s))?;
    Some(format!(
        "'{location}' is under {system}, which belongs to the system: give the lake a directory of its own"
    ))
}

/// Removes `.` and `..` without touching the file system (the path may not exist yet).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

const NAME_RULE: &str = "must start with a letter or '_', use only letters, digits and '_', \
                         and be at most 128 characters long";

/// Names become directory and file names (tables, run ids, leases): this keeps them well
/// within every file system's limit of 255 bytes per name.
const MAX_NAME_LEN: usize = 128;

/// The suffix of the tables `quarantine` checks fill; no declared table may use it.
pub const QUARANTINE_SUFFIX: &str = "__quarantine";

/// The longest pause a spec may ask for between attempts of a task.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// The most attempts a spec may ask for per task.
const MAX_ATTEMPTS: u32 = 100;
/// The most partitions (tasks) a silver table may be computed in: each task reads and sorts
/// its share, and more than this only adds overhead.
const MAX_PARTITIONS: u32 = 1024;

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_NAME_LEN
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks table names: well-formed, unique, and not a quarantine table's.
fn check_table_names<'a>(
    errors: &mut Errors,
    kind: &str,
    names: impl Iterator<Item = &'a Spanned<String>> + Clone,
) {
    check_names(errors, kind, names.clone());
    for (i, n) in names.enumerate() {
        if n.value.ends_with(QUARANTINE_SUFFIX) {
            errors.on(
                n,
                format!("{kind}[{i}].name"),
                format!(
                    "'{}': names ending in '{QUARANTINE_SUFFIX}' are kept for the tables quarantine checks fill",
                    n.value
                ),
            );
        }
    }
}

/// Checks names unique and well-formed within one list.
fn check_names<'a>(
    errors: &mut Errors,
    kind: &str,
    names: impl Iterator<Item = &'a Spanned<String>>,
) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        let field = format!("{kind}[{i}].name");
        if !valid_name(&n.value) {
            errors.on(n, &field, format!("'{}' {NAME_RULE}", n.value));
        } else if !seen.insert(n.value.clone()) {
            errors.on(n, &field, format!("duplicate {kind} name '{}'", n.value));
        }
    }
    seen
}

fn validate(spec: &PipelineSpec, errors: &mut Errors) -> Dag {
    validate_settings(spec, errors);
    let sources = check_names(errors, "sources", spec.sources.iter().map(|s| &s.name));
    for (i, s) in spec.sources.iter().enumerate() {
        validate_source(errors, i, s);
    }
    check_table_names(errors, "bronze", spec.bronze.iter().map(|t| &t.name));
    check_table_names(errors, "silver", spec.silver.iter().map(|t| &t.name));
    check_table_names(errors, "gold", spec.gold.iter().map(|t| &t.name));

    let mut known: BTreeSet<TableRef> = BTreeSet::new();
    for t in &spec.bronze {
        known.insert(TableRef::new(Layer::Bronze, &t.name.value));
    }
    for t in &spec.silver {
        known.insert(TableRef::new(Layer::Silver, &t.name.value));
    }
    for t in &spec.gold {
        known.insert(TableRef::new(Layer::Gold, &t.name.value));
    }

    let mut dag = Dag::default();
    for (i, t) in spec.bronze.iter().enumerate() {
        let (retries, timeout) = (t.retries.as_ref(), t.timeout.as_ref());
        validate_table_limits(errors, &format!("bronze[{i}]"), retries, timeout);
        let deps = validate_bronze(errors, i, t, &sources, &known);
        dag.add(TableRef::new(Layer::Bronze, &t.name.value), deps);
    }
    for (i, t) in spec.silver.iter().enumerate() {
        let (retries, timeout) = (t.retries.as_ref(), t.timeout.as_ref());
        validate_table_limits(errors, &format!("silver[{i}]"), retries, timeout);
        let deps = validate_silver(errors, i, t, &known);
        dag.add(TableRef::new(Layer::Silver, &t.name.value), deps);
    }
    for (i, t) in spec.gold.iter().enumerate() {
        let (retries, timeout) = (t.retries.as_ref(), t.timeout.as_ref());
        validate_table_limits(errors, &format!("gold[{i}]"), retries, timeout);
        let deps = validate_gold(errors, i, t, &known);
        dag.add(TableRef::new(Layer::Gold, &t.name.value), deps);
    }
    check_cycles(spec, &dag, errors);
    validate_sort_by(spec, &known, errors);
    dag
}

/// The pipeline-wide settings: name, schedule, retries, timeouts and lake.
fn validate_settings(spec: &PipelineSpec, errors: &mut Errors) {
    if !valid_name(&spec.pipeline.value) {
        errors.on(
            &spec.pipeline,
            "pipeline",
            format!("'{}' {NAME_RULE}", spec.pipeline.value),
        );
    }
    if let Some(schedule) = &spec.schedule
        && let Err(e) = resolve_schedule(&schedule.value)
    {
        let field = match schedule.value {
            ScheduleSpec::Cron(_) => "schedule".to_string(),
            ScheduleSpec::Detailed(_) => format!("schedule.{}", e.field),
        };
        errors.on(schedule, field, e.message);
    }
    for tag in &spec.tags {
        if tag.value.trim().is_empty() || tag.value.len() > MAX_NAME_LEN {
            errors.on(
                tag,
                "tags",
                format!("a tag has 1 to {MAX_NAME_LEN} characters"),
            );
        }
    }
    validate_retries(errors, "retries", &spec.retries);
    for (field, value) in [
        ("timeouts.task", &spec.timeouts.task),
        ("timeouts.run", &spec.timeouts.run),
    ] {
        validate_timeout(errors, field, value.as_ref());
    }
    validate_maintenance(errors, &spec.maintenance);
    let root = match &spec.lake.value {
        LakeSpec::Root(r) | LakeSpec::Detailed { root: r, .. } => r,
    };
    if root.value.trim().is_empty() {
        errors.on(&spec.lake, "lake.root", "must not be empty");
    } else {
        check_store(errors, &spec.lake, "lake", &root.value);
    }
}

/// `maintenance:`: sizes, durations and counts that parse. (The tables `sort_by` names are
/// checked with the tables, in [`validate_sort_by`].)
fn validate_maintenance(errors: &mut Errors, m: &MaintenanceSpec) {
    if let Some(i) = &m.checkpoint_interval
        && i.value == 0
    {
        errors.on(i, "maintenance.checkpoint_interval", "must be at least 1");
    }
    if let Some(o) = &m.optimize {
        if let Some(n) = &o.min_files
            && n.value < 2
        {
            let message = "must be at least 2 (one file has nothing to compact with)";
            errors.on(n, "maintenance.optimize.min_files", message);
        }
        if let Some(size) = &o.target_file_size
            && let Err(e) = crate::size::parse_size(&size.value).and_then(|b| {
                (b >= 1 << 20)
                    .then_some(())
                    .ok_or_else(|| "a file size of at least 1MiB".to_string())
            })
        {
            errors.on(size, "maintenance.optimize.target_file_size", e);
        }
    }
    if let Some(v) = &m.vacuum
        && let Some(r) = &v.retention
        && !humantime::parse_duration(&r.value).is_ok_and(|d| d.as_secs() >= 3600)
    {
        let message = format!(
            "'{}' is not a retention of an hour or more (such as 7d or 36h)",
            r.value
        );
        errors.on(r, "maintenance.vacuum.retention", message);
    }
}

/// `maintenance.optimize.sort_by`: each key a table of the pipeline.
fn validate_sort_by(spec: &PipelineSpec, known: &BTreeSet<TableRef>, errors: &mut Errors) {
    let Some(o) = &spec.maintenance.optimize else {
        return;
    };
    for (table, columns) in &o.sort_by {
        let field = format!("maintenance.optimize.sort_by.{table}");
        match table.parse::<TableRef>() {
            Ok(t) if known.contains(&t) => {}
            _ => errors.on(columns, field.clone(), format!("unknown table '{table}'")),
        }
        if columns.value.is_empty() {
            errors.on(columns, field, "name at least one column");
        }
    }
}

/// The interval a run of `spec` covers, for `date`.
fn run_interval(spec: &PipelineSpec, date: RunDate, errors: &mut Errors) -> RunInterval {
    let schedule = spec
        .schedule
        .as_ref()
        .and_then(|s| resolve_schedule(&s.value).ok());
    let tz = schedule.as_ref().map_or(chrono_tz::UTC, |s| s.tz);
    let now = chrono::Utc::now();
    let today = now.with_timezone(&tz).date_naive();
    match (date, &schedule) {
        (RunDate::Interval { start, end }, _) => RunInterval { start, end, tz },
        (RunDate::Date(d), Some(s)) => s.interval_of_date(d).unwrap_or_else(|| {
            let at = spec.schedule.as_ref().map(|s| s.referenced);
            let message = format!("the schedule has no interval on or after {d} (end_date)");
            errors.at(
                at.unwrap_or(serde_saphyr::Location::UNKNOWN),
                "schedule",
                message,
            );
            RunInterval::day(d, tz)
        }),
        (RunDate::Date(d), None) => RunInterval::day(d, tz),
        (RunDate::Latest, Some(s)) => s
            .latest_complete(now)
            .unwrap_or_else(|| RunInterval::day(today, tz)),
        (RunDate::Latest, None) => RunInterval::day(today, tz),
    }
}

/// A schedule as the spec writes it, resolved.
fn resolve_schedule(schedule: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
    let d = schedule.details();
    Schedule::new(
        &d.cron,
        d.timezone.as_deref().unwrap_or("UTC"),
        d.start_date.as_deref(),
        d.end_date.as_deref(),
        d.catchup,
        d.max_active_runs,
    )
}

/// Retry settings at `field` (the pipeline's or a table's).
fn validate_retries(errors: &mut Errors, field: &str, r: &RetrySpec) {
    if let Some(a) = &r.max_attempts
        && !(1..=MAX_ATTEMPTS).contains(&a.value)
    {
        let message = format!("must be between 1 and {MAX_ATTEMPTS}");
        errors.at(a.referenced, format!("{field}.max_attempts"), message);
    }
    if let (Some(d), Some(_)) = (&r.delay, &r.delay_seconds) {
        let message = "give 'delay' or the older 'delay_seconds', not both";
        errors.on(d, format!("{field}.delay"), message);
    }
    if let Some(s) = &r.delay_seconds
        && s.value > MAX_RETRY_DELAY.as_secs()
    {
        let message = format!("{} is too long: at most a day", s.value);
        errors.at(s.referenced, format!("{field}.delay_seconds"), message);
    }
    for (name, value) in [("delay", &r.delay), ("max_delay", &r.max_delay)] {
        let Some(v) = value else { continue };
        let ok = humantime::parse_duration(&v.value).is_ok_and(|d| d <= MAX_RETRY_DELAY);
        if !ok {
            let message = format!(
                "'{}' is not a duration up to a day (such as 30s or 5m)",
                v.value
            );
            errors.on(v, format!("{field}.{name}"), message);
        }
    }
}

/// A table's own `retries` and `timeout`, at `field` (`silver[2]`).
fn validate_table_limits(
    errors: &mut Errors,
    field: &str,
    retries: Option<&RetrySpec>,
    timeout: Option<&Spanned<String>>,
) {
    if let Some(r) = retries {
        validate_retries(errors, &format!("{field}.retries"), r);
    }
    validate_timeout(errors, &format!("{field}.timeout"), timeout);
}

/// A timeout at `field`: a duration from a second to a week.
fn validate_timeout(errors: &mut Errors, field: &str, value: Option<&Spanned<String>>) {
    if let Some(v) = value
        && parse_timeout(Some(v)).is_none()
    {
        let message = format!(
            "'{}' is not a duration between 1s and 7days (such as 30m or 4h)",
            v.value
        );
        errors.on(v, field, message);
    }
}

/// A bronze table: its source exists, its batching and its checks; returns what the checks
/// reference.
fn validate_bronze(
    errors: &mut Errors,
    i: usize,
    t: &BronzeSpec,
    sources: &HashSet<String>,
    known: &BTreeSet<TableRef>,
) -> BTreeSet<TableRef> {
    if !sources.contains(&t.source.value) {
        errors.on(
            &t.source,
            format!("bronze[{i}].source"),
            format!("unknown source '{}'", t.source.value),
        );
    }
    if t.files_per_task == 0 {
        errors.on(
            &t.name,
            format!("bronze[{i}].files_per_task"),
            "must be at least 1",
        );
    }
    validate_checks(errors, &format!("bronze[{i}]"), &t.checks, None, known)
}

/// A gold table: its SQL parses and reads known tables, and its checks; returns the tables it
/// reads.
fn validate_gold(
    errors: &mut Errors,
    i: usize,
    t: &GoldSpec,
    known: &BTreeSet<TableRef>,
) -> BTreeSet<TableRef> {
    let field = format!("gold[{i}].sql");
    let mut deps = BTreeSet::new();
    match sql::query_tables(&t.sql.value) {
        Err(e) => errors.on(&t.sql, &field, format!("invalid SQL: {e}")),
        Ok(tables) => {
            for written in tables {
                match written.parse::<TableRef>() {
                    Ok(r) if known.contains(&r) => {
                        deps.insert(r);
                    }
                    Ok(r) => errors.on(&t.sql, &field, format!("unknown table '{r}'")),
                    Err(e) => errors.on(&t.sql, &field, e),
                }
            }
        }
    }
    deps.extend(validate_checks(
        errors,
        &format!("gold[{i}]"),
        &t.checks,
        None,
        known,
    ));
    deps
}

/// Reports a dependency cycle at the table that starts it.
fn check_cycles(spec: &PipelineSpec, dag: &Dag, errors: &mut Errors) {
    if let Err(cycle) = dag.topological_order() {
        let path: Vec<String> = cycle.iter().map(ToString::to_string).collect();
        let first = &cycle[0];
        let loc = match first.layer {
            Layer::Silver => spec
                .silver
                .iter()
                .find(|t| t.name.value == first.name)
                .map(|t| t.from.referenced),
            Layer::Gold => spec
                .gold
                .iter()
                .find(|t| t.name.value == first.name)
                .map(|t| t.sql.referenced),
            Layer::Bronze => None,
        };
        errors.at(
            loc.unwrap_or(serde_saphyr::Location::UNKNOWN),
            format!("{}.{}", first.layer, first.name),
            format!("dependency cycle: {}", path.join(" -> ")),
        );
    }
}

/// URL schemes a source path may have: the object stores this build reads (S3, Azure Blob
/// Storage and ADLS Gen2, Google Cloud Storage).
const OBJECT_SCHEMES: [&str; 8] = ["s3", "s3a", "az", "azure", "abfs", "abfss", "adl", "gs"];

/// Whether a storage option carries a credential (by its name).
fn is_credential(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let words = [
        "secret",
        "token",
        "password",
        "access_key_id",
        "account_key",
        "sas",
        "service_account_key",
    ];
    words.iter().any(|w| key.contains(w))
}

/// Refuses a location on a store this build cannot use (`ftp://`), and `file://` URLs, which
/// would name local files without the checks local paths get.
fn check_store<T>(errors: &mut Errors, at: &Spanned<T>, field: &str, location: &str) {
    let Some((scheme, _)) = location.split_once("://") else {
        return;
    };
    if !OBJECT_SCHEMES.contains(&scheme) {
        let local = if scheme == "file" {
            "write a local file's path without 'file://'"
        } else {
            "use a local path"
        };
        let stores = OBJECT_SCHEMES.map(|s| format!("{s}://")).join(", ");
        errors.on(
            at,
            field,
            format!("'{location}': '{scheme}://' is not a supported store ({local}, or {stores})"),
        );
    }
}

fn validate_postgres(errors: &mut Errors, field: &str, pg: &PostgresSource) {
    let url = &pg.url.value;
    if let Some(var) = url.strip_prefix("env:") {
        if var.trim().is_empty() {
            errors.on(
                &pg.url,
                format!("{field}.url"),
                "'env:' needs a variable name",
            );
        }
    } else {
        match url::Url::parse(url) {
            Ok(u) if !matches!(u.scheme(), "postgres" | "postgresql") => errors.on(
                &pg.url,
                format!("{field}.url"),
                format!(
                    "'{}://' is not a PostgreSQL URL (postgres://user@host:5432/database)",
                    u.scheme()
                ),
            ),
            Ok(u) if u.password().is_some() => errors.on(
                &pg.url,
                format!("{field}.url"),
                "a password does not belong in a spec: use password_env or password_file",
            ),
            Ok(_) => {}
            Err(e) => errors.on(
                &pg.url,
                format!("{field}.url"),
                format!("not a URL ({e}): postgres://user@host:5432/database"),
            ),
        }
    }
    if pg.password_env.is_some() && pg.password_file.is_some() {
        errors.on(
            &pg.url,
            format!("{field}.password_file"),
            "give password_env or password_file, not both",
        );
    }
    match (&pg.table, &pg.query) {
        (Some(t), Some(_)) => {
            errors.on(t, format!("{field}.query"), "give table or query, not both")
        }
        (None, None) => errors.on(&pg.url, field, "needs a table or a query"),
        (Some(t), None)
            if !t.value.split('.').all(valid_sql_name) || t.value.split('.').count() > 2 =>
        {
            errors.on(
                t,
                format!("{field}.table"),
                format!("'{}' is not a table name (name or schema.name)", t.value),
            )
        }
        _ => {}
    }
    for (name, column) in [("cursor", &pg.cursor), ("partition_by", &pg.partition_by)] {
        if let Some(c) = column.as_ref().filter(|c| !valid_sql_name(&c.value)) {
            errors.on(
                c,
                format!("{field}.{name}"),
                format!("'{}' is not a column name", c.value),
            );
        }
    }
    if let Some(p) = &pg.partitions {
        if !(1..=1024).contains(&p.value) {
            errors.on(
                p,
                format!("{field}.partitions"),
                "must be between 1 and 1024",
            );
        }
        if pg.partition_by.is_none() {
            errors.on(
                p,
                format!("{field}.partitions"),
                "needs partition_by, the column to split by",
            );
        }
    }
}

fn validate_http(errors: &mut Errors, field: &str, http: &HttpSource) {
    match url::Url::parse(&http.url.value) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => errors.on(
            &http.url,
            format!("{field}.url"),
            format!("'{}://' is not an HTTP URL", u.scheme()),
        ),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => errors.on(
            &http.url,
            format!("{field}.url"),
            "credentials do not belong in a spec: use auth with token_env or token_file",
        ),
        Ok(_) => {}
        Err(e) => errors.on(
            &http.url,
            format!("{field}.url"),
            format!("not a URL ({e})"),
        ),
    }
    let named = http.params.keys().map(|k| ("params", k));
    for (what, key) in named.chain(http.headers.keys().map(|k| ("headers", k))) {
        if is_credential(key) || key.eq_ignore_ascii_case("authorization") {
            errors.on(
                &http.url,
                format!("{field}.{what}.{key}"),
                "secrets do not belong in a spec: use auth with token_env or token_file",
            );
        }
    }
    if let Some(auth) = http
        .auth
        .as_ref()
        .filter(|a| a.value.token_env.is_some() == a.value.token_file.is_some())
    {
        errors.on(
            auth,
            format!("{field}.auth"),
            "give token_env or token_file",
        );
    }
    if let Some(p) = http
        .records
        .as_ref()
        .filter(|p| !p.value.is_empty() && !p.value.starts_with('/'))
    {
        errors.on(
            p,
            format!("{field}.records"),
            "a JSON pointer starts with '/' (/data/items)",
        );
    }
    if let Some(p) = &http.pagination {
        let needs = match p.value.style {
            PaginationStyle::Page => p
                .value
                .param
                .is_none()
                .then_some("param (the page number's)"),
            PaginationStyle::Cursor if p.value.param.is_none() => Some("param (the cursor's)"),
            PaginationStyle::Cursor => p
                .value
                .next
                .as_ref()
                .filter(|n| n.starts_with('/'))
                .is_none()
                .then_some("next (a JSON pointer to the next cursor: /next)"),
            PaginationStyle::Link => None,
        };
        if let Some(needs) = needs {
            errors.on(p, format!("{field}.pagination"), format!("needs {needs}"));
        }
    }
    if let Some(r) = http
        .requests_per_second
        .as_ref()
        .filter(|r| !(r.value > 0.0 && r.value <= 1000.0))
    {
        errors.on(
            r,
            format!("{field}.requests_per_second"),
            "must be above 0 and at most 1000",
        );
    }
    if let Some(a) = http
        .max_attempts
        .as_ref()
        .filter(|a| !(1..=100).contains(&a.value))
    {
        errors.on(
            a,
            format!("{field}.max_attempts"),
            "must be between 1 and 100",
        );
    }
}

fn validate_kafka(errors: &mut Errors, field: &str, kafka: &KafkaSource) {
    if kafka.brokers.value.is_empty() {
        errors.on(
            &kafka.brokers,
            format!("{field}.brokers"),
            "needs at least one broker (host:port)",
        );
    }
    for broker in &kafka.brokers.value {
        let port = broker
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
            errors.on(
                &kafka.brokers,
                format!("{field}.brokers"),
                format!("'{broker}' is not host:port"),
            );
        }
    }
    // Kafka's own rule for topic names.
    let topic = &kafka.topic.value;
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
        errors.on(
            &kafka.topic,
            format!("{field}.topic"),
            format!("'{topic}' is not a topic name (letters, digits, '.', '_', '-')"),
        );
    }
    if let Some(sasl) = &kafka.sasl {
        let s = &sasl.value;
        if s.password_env.is_some() == s.password_file.is_some() {
            errors.on(
                sasl,
                format!("{field}.sasl"),
                "give password_env or password_file",
            );
        }
    }
    if let Some(r) = kafka.records_per_task.as_ref().filter(|r| r.value == 0) {
        errors.on(r, format!("{field}.records_per_task"), "must be at least 1");
    }
}

/// A plain SQL identifier (letters, digits, `_`, not starting with a digit): quoted as is.
fn valid_sql_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn validate_source(errors: &mut Errors, i: usize, s: &SourceSpec) {
    let kinds = [
        s.path.is_some(),
        s.postgres.is_some(),
        s.http.is_some(),
        s.kafka.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        errors.on(
            &s.name,
            format!("sources[{i}]"),
            "a source is one of files (path), a database (postgres), an API (http) or a \
             stream (kafka)",
        );
        return;
    }
    if let Some(kafka) = &s.kafka {
        validate_kafka(errors, &format!("sources[{i}].kafka"), &kafka.value);
        if s.format.is_some() || s.schema.is_some() {
            errors.on(
                kafka,
                format!("sources[{i}].format"),
                "a kafka source's values are JSON, read like JSON lines: no format or schema",
            );
        }
        return;
    }
    if let Some(http) = &s.http {
        validate_http(errors, &format!("sources[{i}].http"), &http.value);
        if s.format.is_some() || s.schema.is_some() {
            errors.on(
                http,
                format!("sources[{i}].format"),
                "an http source is JSON, read like JSON lines: no format or schema",
            );
        }
        return;
    }
    match (&s.path, &s.postgres) {
        (Some(_), Some(_)) => {}
        (None, None) => errors.on(
            &s.name,
            format!("sources[{i}]"),
            "needs a path (files), postgres (a database table or query), http (an API) or \
             kafka (a topic)",
        ),
        (Some(path), None) if path.value.trim().is_empty() => {
            errors.on(path, format!("sources[{i}].path"), "must not be empty")
        }
        (Some(path), None) => {
            check_store(errors, path, &format!("sources[{i}].path"), &path.value);
            if s.format.is_none() {
                errors.on(
                    path,
                    format!("sources[{i}].format"),
                    "files need a format: json, csv or parquet",
                );
            }
        }
        (None, Some(pg)) => {
            validate_postgres(errors, &format!("sources[{i}].postgres"), &pg.value);
            if let Some(format) = s.format {
                errors.on(
                    pg,
                    format!("sources[{i}].format"),
                    format!("'{format:?}' is for files; a postgres source has its own types"),
                );
            }
            if s.schema.is_some() {
                errors.on(
                    pg,
                    format!("sources[{i}].schema"),
                    "a postgres source takes its columns' types from the database",
                );
            }
        }
    }
    for key in s.storage_options.keys() {
        if is_credential(key) {
            errors.on(
                &s.name,
                format!("sources[{i}].storage_options.{key}"),
                "credentials do not belong in a spec: set them in the environment of the \
                 coordinator and executors (e.g. from a Kubernetes Secret)",
            );
        }
    }
    let d = &s.options.delimiter;
    if d.value.len() != 1 || !d.value.is_ascii() {
        errors.on(
            d,
            format!("sources[{i}].options.delimiter"),
            "must be exactly one ASCII character",
        );
    }
    if let Some(schema) = &s.schema {
        let mut seen = HashSet::new();
        for (j, c) in schema.value.iter().enumerate() {
            let field = format!("sources[{i}].schema[{j}]");
            if !seen.insert(c.name.as_str()) {
                errors.on(
                    &c.data_type,
                    &field,
                    format!("duplicate column '{}'", c.name),
                );
            }
            if crate::meta::is_bronze_column(&c.name) {
                errors.on(
                    &c.data_type,
                    &field,
                    format!("'{}' is a column Medallion adds to bronze rows", c.name),
                );
            }
            if let Err(e) = types::parse_type(&c.data_type.value) {
                errors.on(&c.data_type, format!("{field}.type"), e);
            }
        }
    }
}

fn validate_silver(
    errors: &mut Errors,
    i: usize,
    t: &SilverSpec,
    known: &BTreeSet<TableRef>,
) -> BTreeSet<TableRef> {
    let at = |f: &str| format!("silver[{i}].{f}");
    let mut deps = BTreeSet::new();
    match t.from.value.parse::<TableRef>() {
        Ok(r) if r.layer == Layer::Gold => errors.on(
            &t.from,
            at("from"),
            "a silver table reads a bronze or silver table, not gold",
        ),
        Ok(r) if known.contains(&r) => {
            deps.insert(r);
        }
        Ok(r) => errors.on(&t.from, at("from"), format!("unknown table '{r}'")),
        Err(e) => errors.on(&t.from, at("from"), e),
    }
    if t.columns.is_empty() {
        errors.on(
            &t.name,
            at("columns"),
            "a silver table declares at least one column",
        );
    }
    let names = validate_columns(errors, i, &t.columns);
    for (j, k) in t.keys.iter().enumerate() {
        if !names.contains(k.value.as_str()) {
            errors.on(
                k,
                at(&format!("keys[{j}]")),
                format!("key '{}' is not one of the table's columns", k.value),
            );
        }
    }
    if t.mode == WriteMode::Merge && t.keys.is_empty() {
        errors.on(
            &t.name,
            at("mode"),
            "mode 'merge' needs 'keys' to match rows on",
        );
    }
    if t.partitions == 0 {
        errors.on(&t.name, at("partitions"), "must be at least 1");
    } else if t.partitions > MAX_PARTITIONS {
        errors.on(
            &t.name,
            at("partitions"),
            format!("{} is too many: at most {MAX_PARTITIONS}", t.partitions),
        );
    }
    if let Some(e) = &t.latest_by
        && let Err(msg) = sql::check_expr(&e.value)
    {
        errors.on(e, at("latest_by"), format!("invalid SQL expression: {msg}"));
    }
    for (j, f) in t.filters.iter().enumerate() {
        if let Err(msg) = sql::check_expr(&f.value) {
            errors.on(
                f,
                at(&format!("filters[{j}]")),
                format!("invalid SQL expression: {msg}"),
            );
        }
    }
    validate_cdc(errors, i, t, &names);
    let stored: HashSet<&str> = t.stored_columns().into_iter().collect();
    deps.extend(validate_checks(
        errors,
        &format!("silver[{i}]"),
        &t.checks,
        Some(&stored),
        known,
    ));
    deps
}

/// The change-feed settings of a silver table: required and allowed only with `mode: cdc`,
/// naming its columns, and what its SCD type supports.
fn validate_cdc(errors: &mut Errors, i: usize, t: &SilverSpec, names: &HashSet<&str>) {
    let at = |f: &str| format!("silver[{i}].{f}");
    let Some(scd) = t.scd_type() else {
        refuse_cdc_fields(errors, i, t);
        return;
    };
    if t.keys.is_empty() {
        errors.on(
            &t.name,
            at("keys"),
            "mode 'cdc' needs 'keys' the changes apply to",
        );
    }
    if t.sequence_by.is_none() {
        errors.on(
            &t.name,
            at("sequence_by"),
            "mode 'cdc' needs 'sequence_by' to order changes",
        );
    }
    if let Some(l) = &t.latest_by {
        errors.on(
            l,
            at("latest_by"),
            "mode 'cdc' orders changes by 'sequence_by', not 'latest_by'",
        );
    }
    for (field, e) in cdc_conditions(t) {
        if let Some(e) = e
            && let Err(msg) = sql::check_expr(&e.value)
        {
            errors.on(e, at(field), format!("invalid SQL expression: {msg}"));
        }
    }
    if !matches!(scd, 1 | 2) {
        errors.on(
            &t.stored_as_scd_type,
            at("stored_as_scd_type"),
            "must be 1 or 2",
        );
    }
    if scd == 2
        && let Some(e) = &t.apply_as_truncates
    {
        errors.on(
            e,
            at("apply_as_truncates"),
            "truncates apply to SCD type 1 tables only",
        );
    }
    if scd != 2
        && let Some(c) = t.track_history_columns.first()
    {
        errors.on(
            c,
            at("track_history_columns"),
            "only an SCD type 2 table tracks history",
        );
    }
    validate_cdc_columns(errors, i, t, names);
    let except = |c: &str| t.except_columns.iter().any(|e| e.value == c);
    for bound in [SCD_START, SCD_END] {
        if scd == 2 && names.contains(bound) && !except(bound) {
            errors.on(
                &t.name,
                at("columns"),
                format!("'{bound}' is the version bound an SCD type 2 table adds"),
            );
        }
    }
}

/// The SQL settings of a change feed, by field name.
fn cdc_conditions(t: &SilverSpec) -> [(&'static str, &Option<Spanned<String>>); 3] {
    [
        ("sequence_by", &t.sequence_by),
        ("apply_as_deletes", &t.apply_as_deletes),
        ("apply_as_truncates", &t.apply_as_truncates),
    ]
}

/// Change-feed settings on a table that is not `mode: cdc`: the first one set is refused.
fn refuse_cdc_fields(errors: &mut Errors, i: usize, t: &SilverSpec) {
    let set = cdc_conditions(t)
        .into_iter()
        .find_map(|(field, e)| e.as_ref().map(|e| (field, &e.referenced)))
        .or_else(|| {
            t.except_columns
                .first()
                .map(|c| ("except_columns", &c.referenced))
        })
        .or_else(|| {
            let h = t.track_history_columns.first();
            h.map(|c| ("track_history_columns", &c.referenced))
        });
    if let Some((field, location)) = set {
        errors.at(
            *location,
            format!("silver[{i}].{field}"),
            "only a table with mode 'cdc' applies changes",
        );
    }
}

/// `except_columns` and `track_history_columns` name stored, non-key columns.
fn validate_cdc_columns(errors: &mut Errors, i: usize, t: &SilverSpec, names: &HashSet<&str>) {
    let key = |c: &str| t.keys.iter().any(|k| k.value == c);
    let except = |c: &str| t.except_columns.iter().any(|e| e.value == c);
    for (field, list) in [
        ("except_columns", &t.except_columns),
        ("track_history_columns", &t.track_history_columns),
    ] {
        for (j, c) in list.iter().enumerate() {
            let problem = if !names.contains(c.value.as_str()) {
                "is not one of the table's columns"
            } else if key(&c.value) {
                "is a key"
            } else if field == "track_history_columns" && except(&c.value) {
                "is not stored (except_columns)"
            } else {
                continue;
            };
            errors.on(
                c,
                format!("silver[{i}].{field}[{j}]"),
                format!("'{}' {problem}", c.value),
            );
        }
    }
}

/// A silver table's columns: well-formed unique names, valid expressions and types; returns
/// their names.
fn validate_columns<'a>(
    errors: &mut Errors,
    i: usize,
    columns: &'a [SilverColumn],
) -> HashSet<&'a str> {
    let at = |f: &str| format!("silver[{i}].{f}");
    let mut names = HashSet::new();
    for (j, c) in columns.iter().enumerate() {
        if !valid_name(&c.name.value) {
            errors.on(
                &c.name,
                at(&format!("columns[{j}].name")),
                format!("'{}' {NAME_RULE}", c.name.value),
            );
        } else if !names.insert(c.name.value.as_str()) {
            errors.on(
                &c.name,
                at(&format!("columns[{j}].name")),
                format!("duplicate column '{}'", c.name.value),
            );
        }
        if let Some(e) = &c.expr
            && let Err(msg) = sql::check_expr(&e.value)
        {
            errors.on(
                e,
                at(&format!("columns[{j}].expr")),
                format!("invalid SQL expression: {msg}"),
            );
        }
        if let Some(ty) = &c.data_type
            && let Err(msg) = types::parse_type(&ty.value)
        {
            errors.on(ty, at(&format!("columns[{j}].type")), msg);
        }
    }
    names
}

/// Checks each quality check has what its kind needs; `columns` is known for silver tables.
/// Returns the tables foreign keys reference: the table is checked after they are written.
fn validate_checks(
    errors: &mut Errors,
    table: &str,
    checks: &[CheckSpec],
    columns: Option<&HashSet<&str>>,
    known: &BTreeSet<TableRef>,
) -> BTreeSet<TableRef> {
    let mut referenced = BTreeSet::new();
    let mut seen = HashSet::new();
    for (j, c) in checks.iter().enumerate() {
        let field = format!("{table}.checks[{j}]");
        if !seen.insert(c.name.value.as_str()) {
            errors.on(
                &c.name,
                format!("{field}.name"),
                format!("duplicate check name '{}'", c.name.value),
            );
        }
        validate_check(errors, table, &field, c, columns, known, &mut referenced);
    }
    referenced
}

/// One quality check of `table`, at `field`; adds the table a foreign key references.
fn validate_check(
    errors: &mut Errors,
    table: &str,
    field: &str,
    c: &CheckSpec,
    columns: Option<&HashSet<&str>>,
    known: &BTreeSet<TableRef>,
    referenced: &mut BTreeSet<TableRef>,
) {
    let cols = c.all_columns();
    if c.action().screens_rows() {
        let at = format!("{field}.action");
        if table.starts_with("bronze") {
            errors.on(
                &c.name,
                at,
                "bronze keeps every raw row: drop and quarantine apply to silver and gold checks",
            );
        } else if crate::checks::failing_row(c).is_none() {
            errors.on(
                &c.name,
                at,
                "drop and quarantine apply to checks of single rows: not_null, range, \
                 accepted_values, regex, expression",
            );
        }
    }
    if !refuse_check_shape(errors, field, c) {
        validate_check_kind(errors, field, c, known, referenced);
    }
    if let Some(known) = columns {
        for col in cols {
            if !known.contains(col.value.as_str()) {
                errors.on(
                    col,
                    format!("{field}.column"),
                    format!("unknown column '{}'", col.value),
                );
            }
        }
    }
}

/// A check's columns and bounds are of the shape its kind takes; true when they are not (the
/// error is reported).
fn refuse_check_shape(errors: &mut Errors, field: &str, c: &CheckSpec) -> bool {
    let cols = c.all_columns();
    let needs_columns = !matches!(c.check, CheckKind::Expression | CheckKind::RowCount);
    let one_column = matches!(c.check, CheckKind::Freshness | CheckKind::ForeignKey);
    match c.check {
        _ if needs_columns && cols.is_empty() => {
            errors.on(&c.name, field, "this check needs 'column' or 'columns'")
        }
        _ if one_column && cols.len() != 1 => {
            errors.on(&c.name, field, "this check takes one 'column'")
        }
        CheckKind::RowCount if c.min.is_none() && c.max.is_none() => errors.on(
            &c.name,
            field,
            "a row_count check needs 'min', 'max' or both",
        ),
        CheckKind::RowCount
            if [&c.min, &c.max]
                .iter()
                .any(|b| matches!(b, Some(Bound::Text(_)))) =>
        {
            errors.on(&c.name, field, "row_count bounds are numbers")
        }
        _ if c
            .min
            .iter()
            .chain(&c.max)
            .chain(&c.values)
            .any(|b| !b.is_finite()) =>
        {
            errors.on(
                &c.name,
                field,
                "bounds and values must be finite numbers (not .nan or .inf) or text",
            )
        }
        _ => return false,
    }
    true
}

/// What a check's kind needs beyond its shape: values, a valid pattern, age, reference, bounds
/// or expression; adds the table a foreign key references.
fn validate_check_kind(
    errors: &mut Errors,
    field: &str,
    c: &CheckSpec,
    known: &BTreeSet<TableRef>,
    referenced: &mut BTreeSet<TableRef>,
) {
    match c.check {
        CheckKind::AcceptedValues if c.values.is_empty() => errors.on(
            &c.name,
            field,
            "an accepted_values check needs a list of 'values'",
        ),
        CheckKind::Regex => match &c.pattern {
            None => errors.on(&c.name, field, "a regex check needs 'pattern'"),
            Some(p) => {
                if let Err(e) = regex::Regex::new(&p.value) {
                    errors.on(p, format!("{field}.pattern"), format!("invalid regex: {e}"));
                }
            }
        },
        CheckKind::Freshness => {
            if let Err(msg) = c.max_age() {
                let at = c.max_age.as_ref().unwrap_or(&c.name);
                errors.on(at, format!("{field}.max_age"), msg);
            }
        }
        CheckKind::ForeignKey => {
            let at = c.references.as_ref().unwrap_or(&c.name);
            match c.reference() {
                Err(msg) => errors.on(at, format!("{field}.references"), msg),
                Ok((r, _)) if !known.contains(&r) => errors.on(
                    at,
                    format!("{field}.references"),
                    format!("unknown table '{r}'"),
                ),
                Ok((r, _)) => {
                    referenced.insert(r);
                }
            }
        }
        CheckKind::Range if c.min.is_none() && c.max.is_none() => {
            errors.on(&c.name, field, "a range check needs 'min', 'max' or both")
        }
        CheckKind::Expression => match &c.expr {
            None => errors.on(&c.name, field, "an expression check needs 'expr'"),
            Some(e) => {
                if let Err(msg) = sql::check_expr(&e.value) {
                    errors.on(
                        e,
                        format!("{field}.expr"),
                        format!("invalid SQL expression: {msg}"),
                    );
                }
            }
        },
        _ => {}
    }
}
