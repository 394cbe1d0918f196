//! Support for the end-to-end tests: a scratch workspace, the real `medallion` binary and the
//! independent Delta readers (Python `deltalake` and DuckDB, see `tests/py/delta_check.py`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

use serde_json::Value;

pub mod azure;
pub mod cluster;
pub mod faults;
pub mod kafka;
pub mod postgres;
pub mod prometheus;
pub mod s3;
pub mod tls;

/// The `medallion` binary next to the test binary (`scripts/test` builds it first).
pub fn medallion_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MEDALLION_BIN") {
        return PathBuf::from(p);
    }
    binary("medallion")
}

/// A binary of the workspace next to the test binary (`scripts/test` builds them all).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` (scripts/test does)",
        bin.display()
    );
    bin
}

/// The Python that has the readers installed (`scripts/test` sets up a virtualenv).
pub fn python() -> String {
    std::env::var("MEDALLION_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The longest one command of a test may take. A process that hangs fails its test with what
/// it printed by then, instead of holding a test thread until CI's own limit ends the run.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(15 * 60);

/// [`Command::output`], but the command is killed after `limit`: `Err` holds what it printed
/// until then.
pub fn output_within(command: &mut Command, limit: Duration) -> Result<Output, Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    // Drained on threads so that a chatty process never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let ended = child.wait_timeout(limit).expect("wait for a command");
    let status = match ended {
        Some(status) => status,
        None => {
            let _ = child.kill();
            child.wait().expect("wait for a killed command")
        }
    };
    let output = Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    match ended {
        Some(_) => Ok(output),
        None => Err(output),
    }
}

/// [`output_within`] [`COMMAND_LIMIT`]; a command still running then fails the test.
pub fn output(command: &mut Command) -> Output {
    output_within(command, COMMAND_LIMIT).unwrap_or_else(|out| {
        panic!(
            "{command:?} was still running after {COMMAND_LIMIT:?}; it printed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The outcome of one `medallion` invocation.
#[derive(Debug)]
pub struct Invocation {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Invocation {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Invocation {
    /// The JSON run report (`run --output json`).
    pub fn report(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// A scratch directory holding a spec, its data and its lake.
pub struct Workspace {
    dir: tempfile::TempDir,
    /// Environment of every process started for it (credentials of an object store).
    env: std::sync::Mutex<Vec<(String, String)>>,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            env: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sets an environment variable of every `medallion` process started from now on, and
    /// of a cluster's processes.
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.env.lock().expect("workspace env");
        env.push((key.to_string(), value.to_string()));
    }

    /// The variables [`Workspace::set_env`] set.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env.lock().expect("workspace env").clone()
    }

    /// A workspace with the e-commerce example spec and `orders` generated orders in
    /// `files` files; returns it with the number of order lines written.
    pub fn example(orders: usize, files: usize) -> (Self, u64) {
        let ws = Self::new();
        let spec =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ecommerce/pipeline.yaml");
        ws.write(
            "pipeline.yaml",
            &std::fs::read_to_string(spec).expect("example spec"),
        );
        let (orders, files) = (orders.to_string(), files.to_string());
        let out = ws.medallion(&["generate", "data", "--orders", &orders, "--files", &files]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        // "wrote <lines> order lines in ..."
        let lines = out
            .stdout
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok());
        (ws, lines.expect("generator output names the line count"))
    }

    /// Writes a file (creating its directories), relative to the workspace.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("create dirs");
        std::fs::write(&path, content).expect("write file");
        path
    }

    /// Runs `medallion` with `args` in the workspace.
    pub fn medallion(&self, args: &[&str]) -> Invocation {
        Invocation::from(output(
            Command::new(medallion_bin())
                .args(args)
                .current_dir(self.path())
                .envs(self.env())
                .env("MEDALLION_LOG", "warn"),
        ))
    }

    /// Starts `medallion run <spec>` and SIGKILLs it after `delay` (no cleanup of any kind);
    /// returns whether it was still running then.
    pub fn run_killed_after(&self, spec: &str, delay: std::time::Duration) -> bool {
        self.killed_after(&["run", spec, "--executors", "2"], delay)
    }

    /// Starts `medallion <args>` and SIGKILLs it after `delay`; whether it was still running.
    pub fn killed_after(&self, args: &[&str], delay: std::time::Duration) -> bool {
        let mut child = Command::new(medallion_bin())
            .args(args)
            .current_dir(self.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run medallion");
        std::thread::sleep(delay);
        let running = child.try_wait().expect("child status").is_none();
        let _ = child.kill();
        let _ = child.wait();
        running
    }

    /// Starts `medallion <args>` and SIGKILLs it as soon as `ready` holds (polled every 20
    /// ms, for up to [`COMMAND_LIMIT`]): a kill at a point of the run's own progress, not after
    /// a delay a loaded machine may not have reached. Whether it was still running then.
    pub fn killed_when(&self, args: &[&str], mut ready: impl FnMut() -> bool) -> bool {
        let mut child = Command::new(medallion_bin())
            .args(args)
            .current_dir(self.path())
            .envs(self.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run medallion");
        let started = std::time::Instant::now();
        let mut killed = false;
        while started.elapsed() < COMMAND_LIMIT {
            if child.try_wait().expect("child status").is_some() {
                break;
            }
            if ready() {
                killed = child.try_wait().expect("child status").is_none();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        killed
    }

    /// Starts `medallion run pipeline.yaml` and SIGKILLs it once the bronze table at `table`
    /// (relative to the workspace) has a new data file; whether that was before the table's
    /// commit, so the kill landed mid-ingest.
    pub fn killed_mid_ingest(&self, table: &str) -> bool {
        let bronze = self.path().join(table);
        let commits =
            |dir: &Path| std::fs::read_dir(dir.join("_delta_log")).map_or(0, |d| d.count());
        let (before, files_before) = (commits(&bronze), parquet_files(&bronze));
        let run = ["run", "pipeline.yaml", "--executors", "2"];
        self.killed_when(&run, || parquet_files(&bronze) > files_before)
            && commits(&bronze) == before
    }

    /// Runs a spec in embedded mode with a JSON report.
    pub fn run(&self, spec: &str) -> Invocation {
        self.medallion(&["run", spec, "--output", "json", "--executors", "2"])
    }

    /// Reads a table (relative to the workspace) with both independent readers.
    pub fn read_table(&self, rel: &str) -> Value {
        let table = self.path().join(rel);
        read_delta(table.to_str().expect("utf-8 path"), None)
    }

    /// Reads one version of a table with both independent readers (time travel).
    pub fn read_table_at(&self, rel: &str, version: u64) -> Value {
        let table = self.path().join(rel);
        let table = table.to_str().expect("utf-8 path");
        json_output(delta_check(&["read", table, &version.to_string()]))
    }

    /// Every file under the lake directory `rel` with its size, except run leases, the run
    /// history and the snapshots (taken and written by every run, whatever it then does):
    /// equal before and after means no table changed.
    pub fn lake_files(&self, rel: &str) -> std::collections::BTreeMap<String, u64> {
        let root = self.path().join(rel);
        let mut files = std::collections::BTreeMap::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                let bookkeeping = [
                    "_medallion/leases",
                    "_medallion/runs",
                    "_medallion/snapshots",
                ];
                if bookkeeping.iter().any(|b| rel.starts_with(b)) {
                    continue;
                }
                match entry.metadata() {
                    Ok(m) if m.is_dir() => dirs.push(path),
                    Ok(m) => {
                        files.insert(rel, m.len());
                    }
                    Err(_) => {}
                }
            }
        }
        files
    }

    /// Whether a Delta table exists at `rel`.
    pub fn has_table(&self, rel: &str) -> bool {
        self.path().join(rel).join("_delta_log").is_dir()
    }
}

/// The Parquet files under `dir`, committed or not (a table's data files and what its
/// running tasks are writing).
pub fn parquet_files(dir: &Path) -> usize {
    let mut found = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                found += 1;
            }
        }
    }
    found
}

/// Reads a Delta table (a path, or a URL with its storage options) with both readers.
pub fn read_delta(location: &str, storage_options: Option<&Value>) -> Value {
    let mut command = delta_check(&["read", location]);
    if let Some(options) = storage_options {
        command.env("DELTA_STORAGE_OPTIONS", options.to_string());
    }
    json_output(command)
}

/// The directory of the tests' Python helpers (`delta_check.py`), for scripts to import.
pub fn py_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py")
}

/// Runs Python `code` with `args` (`sys.argv[1:]`), which must succeed; its standard output.
pub fn run_python(code: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let out = output(
        Command::new(python())
            .arg("-c")
            .arg(code)
            .args(args.iter().map(|a| a.as_ref())),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `tests/py/delta_check.py` and parses its JSON output.
pub fn python_json(args: &[&str]) -> Value {
    json_output(delta_check(args))
}

fn delta_check(args: &[&str]) -> Command {
    let script = py_dir().join("delta_check.py");
    let mut command = Command::new(python());
    command.arg(script).args(args);
    command
}

fn json_output(mut command: Command) -> Value {
    let out = output(&mut command);
    let args: Vec<_> = command.get_args().skip(1).collect();
    assert!(
        out.status.success(),
        "delta_check.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from delta_check.py")
}

/// The table report of `table` in a run report.
pub fn table<'a>(report: &'a Value, table: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["table"] == table))
        .unwrap_or_else(|| panic!("no table {table} in report {report:#}"))
}

/// A counter of a table in a run report.
pub fn metric(report: &Value, t: &str, name: &str) -> u64 {
    table(report, t)["metrics"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no metric {name} for {t}"))
}

/// Asserts two row sets are equal, matched on `key`, with numbers equal to 1e-6 relative
/// (decimal and floating point averages round differently).
pub fn assert_rows_close(ours: &Value, expected: &Value, key: &str, what: &str) {
    let by_key =
        |rows: &Value| -> std::collections::BTreeMap<String, serde_json::Map<String, Value>> {
            rows.as_array()
                .unwrap_or_else(|| panic!("{what}: not a row list"))
                .iter()
                .map(|r| {
                    (
                        r[key].to_string(),
                        r.as_object().expect("row object").clone(),
                    )
                })
                .collect()
        };
    let (a, b) = (by_key(ours), by_key(expected));
    assert_eq!(a.len(), b.len(), "{what}: row counts differ");
    for (k, row) in &a {
        let other = b
            .get(k)
            .unwrap_or_else(|| panic!("{what}: {key}={k} missing from the reference"));
        assert_eq!(
            row.len(),
            other.len(),
            "{what}: columns differ at {key}={k}: {row:?} vs {other:?}"
        );
        for (col, v) in row {
            let w = &other[col];
            let close = match (v.as_f64(), w.as_f64()) {
                (Some(x), Some(y)) => (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0),
                _ => v == w,
            };
            assert!(close, "{what}: {key}={k}, column {col}: {v} vs {w}");
        }
    }
}

/// The tables of the e-commerce example, relative to its lake.
pub const EXAMPLE_TABLES: [&str; 8] = [
    "bronze/orders",
    "bronze/customers",
    "bronze/products",
    "silver/orders",
    "silver/customers",
    "silver/products",
    "gold/customer_360",
    "gold/product_performance",
];

/// Where the example's orders of an unknown status go when its `status_known` check
/// quarantines them (the cluster and object-storage tests make it do so).
pub const EXAMPLE_QUARANTINE: &str = "silver/orders__quarantine";

/// Rows without the columns that differ between two runs by design (ingestion and quarantine
/// times, the run id).
pub fn rows_without_run_columns(table: &Value) -> Vec<String> {
    let mut rows: Vec<String> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.as_object().unwrap().clone();
            for differs in [
                "_ingested_at",
                "_ingestion_date",
                // A local file's modification time, an object's ETag.
                "_source_file_version",
                "_quarantine_run_id",
                "_quarantined_at",
            ] {
                r.remove(differs);
            }
            Value::Object(r).to_string()
        })
        .collect();
    rows.sort();
    rows
}

/// Asserts a table of the example (`table`, as in [`EXAMPLE_TABLES`]) read by [`read_delta`]
/// equals the same table of a reference run; `logs` explain a failure.
pub fn assert_same_example_table(table: &str, ours: &Value, reference: &Value, logs: &str) {
    assert_eq!(ours["readers_agree"], true, "{table}: readers disagree");
    if table == EXAMPLE_QUARANTINE {
        // Every run quarantines what it processed, under its own run id, and silver
        // processes all of bronze each run: compare the distinct rows.
        let distinct = |t: &Value| {
            let mut rows = rows_without_run_columns(t);
            rows.dedup();
            rows
        };
        assert!(
            distinct(ours) == distinct(reference),
            "{table}: quarantined rows differ from the reference run"
        );
        return;
    }
    assert_eq!(
        ours["num_rows"], reference["num_rows"],
        "{table}: row counts differ\n{logs}"
    );
    let gold_key = [
        ("customer_360", "customer_id"),
        ("product_performance", "product_id"),
    ]
    .iter()
    .find(|(name, _)| table.ends_with(name))
    .map(|(_, key)| *key);
    match gold_key {
        Some(key) => assert_rows_close(&ours["rows"], &reference["rows"], key, table),
        None => assert!(
            rows_without_run_columns(ours) == rows_without_run_columns(reference),
            "{table}: rows differ from the reference run"
        ),
    }
}

/// How far a source was read, as each commit of the table at `table` recorded it
/// (`medallion.source_position`), oldest first, read from its log's JSON.
pub fn source_positions(table: &Path) -> Vec<Value> {
    let mut commits: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .expect("a Delta log")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    commits
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).expect("a commit");
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|a| a["commitInfo"].get("medallion.source_position").cloned())
                .collect::<Vec<_>>()
        })
        .collect()
}
