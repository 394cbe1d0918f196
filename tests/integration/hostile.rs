//! Hostile input: specs, paths, SQL, data files and flags a careless or malicious user could
//! give. Each case asserts its exit code, a message naming what the user wrote, no panic,
//! and (where the input is refused) a lake left exactly as it was.

use std::path::Path;
use std::process::Command;

use medallion_tests::Workspace;
use medallion_tests::cluster::Cluster;

use crate::fixture::{CUSTOMERS, SPEC, shop};

/// The shop's spec with customers read from a directory, so a case can add a CSV file.
fn base_spec() -> String {
    SPEC.replace("path: data/customers.csv", "path: data/crm")
}

/// What a case does to a copy of a shop whose lake is up to date.
enum Setup {
    /// Replaces text of the spec (`pipeline.yaml`).
    Spec(&'static str, String),
    /// Appends text to the spec.
    Append(String),
    /// Writes a file (relative to the workspace).
    File(&'static str, Vec<u8>),
    /// Makes a symbolic link at the second path to the first.
    Link(&'static str, &'static str),
    /// Makes a directory.
    Dir(&'static str),
    Nothing,
}

struct Case {
    name: &'static str,
    setup: Setup,
    args: &'static [&'static str],
    code: i32,
    /// Texts the output (stderr, or stdout's report) must contain.
    says: &'static [&'static str],
    /// Texts the output must not contain (names the user never wrote).
    never: &'static [&'static str],
    /// The lake must be as it was (the input was refused before anything was written).
    unchanged: bool,
}

const RUN: &[&str] = &["run", "pipeline.yaml", "--output", "json"];

fn spec(from: &'static str, to: impl Into<String>) -> Setup {
    assert!(base_spec().contains(from), "the spec has no '{from}'");
    Setup::Spec(from, to.into())
}

fn refused(name: &'static str, setup: Setup, says: &'static [&'static str]) -> Case {
    Case {
        name,
        setup,
        args: RUN,
        code: 2,
        says,
        never: &["__medallion"],
        unchanged: true,
    }
}

fn cases() -> Vec<Case> {
    let long = "x".repeat(300);
    let nested = format!("{}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let utf16: Vec<u8> = "customer_id,customer_name\n12,Eve\n"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let bomb = "pipeline: shop\nlake: lake\nsources: []\na: &a [x, x, x, x, x, x, x, x, x, x]\n\
                b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
                d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n\
                f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    let deep = format!(
        "pipeline: shop\nlake: lake\ntags: {}{}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let mut huge = base_spec().into_bytes();
    huge.resize(100 << 20, b'#');
    let gold = |sql: &str| Setup::Append(format!("  - name: leak\n    sql: {sql}\n"));
    let cartesian = (b'a'..=b'm')
        .map(|t| format!("silver.orders {}", t as char))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        // Where a spec reads and writes, and SQL that would reach files.
        refused("lake at /", spec("lake: lake", "lake: /"), &["pipeline.yaml:3", "lake", "'/' is the root of the file system"]),
        refused("lake under /etc", spec("lake: lake", "lake: /etc/lake"), &["lake", "'/etc/lake' is under /etc"]),
        refused("file:// lake", spec("lake: lake", "lake: file:///tmp/lake"), &["lake", "'file://' is not a supported store", "without 'file://'"]),
        refused("file:// source", spec("path: data/crm", "path: file:///etc/passwd"), &["sources[1].path", "'file://' is not a supported store"]),
        refused("table function reading /etc/passwd", gold("SELECT * FROM read_csv('/etc/passwd')"), &["gold[2].sql", "'read_csv(...)': table functions cannot be used"]),
        refused("table function in a join", gold("SELECT * FROM silver.orders JOIN parquet_metadata('/etc/passwd') ON true"), &["gold[2].sql", "'parquet_metadata(...)'"]),
        refused("file path as a table", gold("SELECT * FROM '/etc/passwd'"), &["gold[2].sql", "''/etc/passwd'' is not a table"]),
        refused("CREATE EXTERNAL TABLE", gold("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc/passwd'"), &["gold[2].sql", "expected a query"]),
        refused("COPY to a file", gold("COPY (SELECT * FROM silver.orders) TO '/tmp/orders.csv'"), &["gold[2].sql", "expected a query"]),
        refused("two statements", gold("SELECT 1 AS one; SELECT 2 AS two"), &["gold[2].sql", "found 2"]),
        refused("subquery in a column", spec("{ name: email, expr: lower(trim(email)) }", "{ name: email, expr: \"(SELECT max(column_1) FROM read_csv('/etc/passwd'))\" }"), &["silver[0].columns[6].expr", "a subquery cannot be part of an expression"]),
        refused("subquery in a check", spec("check: unique, column: order_id, severity: critical }", "check: expression, expr: \"EXISTS (SELECT 1)\", severity: critical }"), &["silver[0].checks[0].expr", "subquery"]),
        refused("100 MB spec", Setup::File("pipeline.yaml", huge), &["pipeline.yaml", "too large for a spec"]),
        refused("YAML nested 10000 deep", Setup::File("pipeline.yaml", deep.into_bytes()), &["pipeline.yaml:3", "tags", "recursion limit exceeded"]),
        // Limits: a query that would take more memory than the run has fails alone, naming its
        // table; a pipeline within a small limit runs.
        Case { name: "cartesian join under a memory limit", setup: gold(&format!("SELECT a.order_id, array_agg(concat(b.email, c.email, d.email)) AS s FROM {cartesian} GROUP BY a.order_id")), args: &["run", "pipeline.yaml", "--memory-limit", "16MiB"], code: 1, says: &["gold.leak", "Resources exhausted"], never: &[], unchanged: false },
        Case { name: "a small memory limit", setup: Setup::Nothing, args: &["run", "pipeline.yaml", "--full-refresh", "--memory-limit", "16MiB", "--output", "json"], code: 0, says: &["\"succeeded\": true"], never: &[], unchanged: false },
        // Specs: refused by validation, before the lake is touched.
        refused("long pipeline name", spec("pipeline: shop", format!("pipeline: {long}")), &["pipeline:", "at most 128 characters"]),
        refused("long table name", spec("name: customer_360", format!("name: {long}")), &["gold[0].name", "at most 128 characters"]),
        refused("reserved quarantine name", spec("name: customer_360", "name: product_performance__quarantine"), &["gold[0].name", "__quarantine"]),
        refused("path in a table name", spec("{ name: orders, source: api", "{ name: ../../etc, source: api"), &["bronze[0].name", "only letters, digits"]),
        refused("retry delay over a day", Setup::Append("retries: { delay_seconds: 100000 }\n".into()), &["retries.delay_seconds", "at most a day"]),
        refused("retry delay of two days", Setup::Append("retries: { delay: 2days, backoff: fixed }\n".into()), &["retries.delay", "'2days'", "up to a day"]),
        refused("bad schedule time zone", Setup::Append("schedule: { cron: \"0 * * * *\", timezone: Nowhere/City }\n".into()), &["schedule.timezone", "'Nowhere/City'"]),
        refused("unknown template variable", spec("path: data/crm", "path: \"data/{{ tomorrow }}/crm\""), &["sources[1].path", "undefined", "ds_nodash"]),
        refused("no attempts", Setup::Append("retries: { max_attempts: 0 }\n".into()), &["retries.max_attempts"]),
        refused("bad task timeout", Setup::Append("timeouts: { task: forever }\n".into()), &["timeouts.task", "'forever'"]),
        refused("source on an unknown store", spec("path: data/crm", "path: ftp://host/customers.csv"), &["sources[1].path", "'ftp://' is not a supported store"]),
        refused("credentials in a source's options", spec("path: data/crm", "path: s3://bucket/crm\n    storage_options: { AWS_SECRET_ACCESS_KEY: x }"), &["sources[1].storage_options.AWS_SECRET_ACCESS_KEY", "environment"]),
        refused("NaN bound", spec("check: unique, column: order_id, severity: critical }", "check: range, column: amount, min: .nan, severity: critical }"), &["silver[0].checks[0]", "finite"]),
        refused("infinite accepted value", spec("check: unique, column: order_id, severity: critical }", "check: accepted_values, column: amount, values: [.inf], severity: critical }"), &["finite"]),
        refused("broken check expression", spec("check: unique, column: order_id, severity: critical }", "check: expression, expr: \"amount > > 0\", severity: critical }"), &["silver[0].checks[0].expr", "invalid SQL expression"]),
        refused("statement instead of a query", spec("sql: |\n      SELECT p.product_id", "sql: |\n      DROP TABLE silver.orders; SELECT p.product_id"), &["gold[1].sql", "exactly one SQL statement"]),
        refused("DDL instead of a query", spec("sql: |\n      SELECT p.product_id, p.product_name, p.category, sum(o.quantity) AS units_sold,\n             sum(o.amount) AS revenue, count(DISTINCT o.customer_id) AS unique_customers\n      FROM silver.orders o JOIN silver.products p ON o.product_id = p.product_id\n      GROUP BY p.product_id, p.product_name, p.category", "sql: DROP TABLE silver.orders"), &["gold[1].sql", "expected a query"]),
        refused("misspelt field", spec("    columns:\n      - { name: order_id, type: bigint }", "    colums:\n      - { name: order_id, type: bigint }"), &["pipeline.yaml:", "colums"]),
        refused("unknown type", spec("{ name: quantity, type: int }", "{ name: quantity, type: money }"), &["silver[0].columns[3].type", "money"]),
        refused("huge decimal", spec("type: \"decimal(10,2)\"", "type: \"decimal(99,2)\""), &["silver[0].columns[4].type"]),
        refused("two-character delimiter", spec("delimiter: \";\"", "delimiter: \";;\""), &["sources[2].options.delimiter", "one ASCII character"]),
        refused("dependency cycle", Setup::Append("  - name: a\n    sql: SELECT * FROM gold.b\n  - name: b\n    sql: SELECT * FROM gold.a\n".into()), &["dependency cycle"]),
        refused("bad cron", spec("pipeline: shop", "pipeline: shop\nschedule: \"61 * * * *\""), &["schedule", "invalid cron expression"]),
        refused("no files per task", spec("files_per_task: 1", "files_per_task: 0"), &["bronze[0].files_per_task", "at least 1"]),
        refused("no partitions", spec("partitions: 2", "partitions: 0"), &["silver[0]", "partitions", "at least 1"]),
        refused("a million partitions", spec("partitions: 2", "partitions: 1000000"), &["silver[0]", "partitions", "at most 1024"]),
        refused("unknown source", spec("{ name: orders, source: api", "{ name: orders, source: nowhere"), &["bronze[0].source", "unknown source 'nowhere'"]),
        refused("empty lake", spec("lake: lake", "lake: \"\""), &["lake.root", "must not be empty"]),
        refused("duplicate table", spec("name: customer_360", "name: product_performance"), &["duplicate gold name 'product_performance'"]),
        refused("unknown table in SQL", spec("FROM silver.orders o JOIN silver.customers", "FROM silver.nope o JOIN silver.customers"), &["gold[0].sql", "unknown table 'silver.nope'"]),
        refused("negative count", Setup::Append("retries: { max_attempts: -1 }\n".into()), &["retries.max_attempts", "invalid u32"]),
        refused("list of 400M values", Setup::Append("  - name: big\n    sql: SELECT count(*) AS n FROM (SELECT unnest(range(1, 400000000)))\n".into()), &["gold[2].sql", "builds 399999999 values at once"]),
        refused("string of 2 GiB", spec("{ name: email, expr: lower(trim(email)) }", "{ name: email, expr: \"repeat('x', power(2, 31) - 1)\" }"), &["silver[0].columns[6].expr", "outside the memory limit"]),
        refused("alias bomb", Setup::File("pipeline.yaml", bomb.as_bytes().to_vec()), &["pipeline.yaml"]),
        refused("empty spec", Setup::File("pipeline.yaml", Vec::new()), &["pipeline.yaml"]),
        refused("spec not UTF-8", Setup::File("pipeline.yaml", b"pipeline: \xff\xfe\n".to_vec()), &["pipeline.yaml", "not UTF-8"]),
        Case { name: "spec is a device", setup: Setup::Nothing, args: &["validate", "/dev/zero"], code: 2, says: &["/dev/zero", "not a regular file"], never: &[], unchanged: true },
        Case { name: "spec is a directory", setup: Setup::Nothing, args: &["run", "data"], code: 2, says: &["data", "not a regular file"], never: &[], unchanged: true },
        Case { name: "no spec", setup: Setup::Nothing, args: &["validate", "missing.yaml"], code: 2, says: &["missing.yaml", "cannot read the spec"], never: &[], unchanged: true },
        // Flags.
        Case { name: "zero memory limit", setup: Setup::Nothing, args: &["run", "pipeline.yaml", "--memory-limit", "0"], code: 2, says: &["--memory-limit", "at least 16MiB"], never: &[], unchanged: true },
        Case { name: "memory limit not a size", setup: Setup::Nothing, args: &["run", "pipeline.yaml", "--memory-limit", "lots"], code: 2, says: &["'lots' is not a size"], never: &[], unchanged: true },
        Case { name: "executors not a number", setup: Setup::Nothing, args: &["run", "pipeline.yaml", "--executors", "-1"], code: 2, says: &["'-1'"], never: &[], unchanged: true },
        Case { name: "unknown command", setup: Setup::Nothing, args: &["vacuum-everything"], code: 2, says: &["vacuum-everything"], never: &[], unchanged: true },
        Case { name: "negative orders", setup: Setup::Nothing, args: &["generate", "out", "--orders", "-5"], code: 2, says: &["'-5'"], never: &[], unchanged: true },
        // Paths: stopped before anything is written.
        Case { name: "source is a device", setup: spec("path: data/crm", "path: /dev/zero"), args: RUN, code: 1, says: &["source 'crm'", "/dev/zero", "not a regular file or a directory"], never: &[], unchanged: true },
        Case { name: "glob under a missing directory", setup: spec("path: data/orders/*.jsonl", "path: data/nowhere/*.jsonl"), args: RUN, code: 1, says: &["source 'api'", "data/nowhere", "does not exist"], never: &[], unchanged: true },
        // Data files.
        Case { name: "UTF-16 CSV without a byte order mark", setup: Setup::File("data/crm/more.csv", utf16), args: RUN, code: 1, says: &["data/crm/more.csv", "save it as UTF-8"], never: &[], unchanged: true },
        Case { name: "binary file among the orders", setup: Setup::File("data/orders/blob.jsonl", vec![0, 159, 146, 150, 0, 1, 2]), args: RUN, code: 1, says: &["blob.jsonl", "NUL bytes"], never: &[], unchanged: true },
        Case { name: "empty orders file", setup: Setup::File("data/orders/empty.jsonl", Vec::new()), args: RUN, code: 0, says: &["up_to_date"], never: &[], unchanged: true },
        Case { name: "link to a device", setup: Setup::Link("/dev/zero", "data/orders/zero.jsonl"), args: RUN, code: 0, says: &["up_to_date"], never: &[], unchanged: true },
        Case { name: "directory named like a file", setup: Setup::Dir("data/orders/dir.jsonl"), args: RUN, code: 0, says: &["up_to_date"], never: &[], unchanged: true },
        Case { name: "JSON nested 100000 deep", setup: Setup::File("data/orders/deep.jsonl", nested.into_bytes()), args: RUN, code: 0, says: &["\"rows_rescued\": 1"], never: &[], unchanged: false },
        Case { name: "one line of 2 MiB", setup: Setup::File("data/orders/long.jsonl", vec![b'x'; 2 << 20]), args: RUN, code: 0, says: &["\"rows_rescued\": 1"], never: &[], unchanged: false },
        Case { name: "CSV quote left open", setup: Setup::File("data/crm/more.csv", b"customer_id,customer_name\n12,\"Eve\n13,Mallory\n".to_vec()), args: RUN, code: 0, says: &["\"rows_rescued\": 1"], never: &[], unchanged: false },
        // SQL the user wrote, reported as written.
        Case { name: "range bound a column cannot take", setup: spec("check: unique, column: order_id, severity: critical }", "check: range, column: amount, min: soon, severity: critical }"), args: RUN, code: 1, says: &["check 'id_unique' (range on column amount) cannot be evaluated", "soon"], never: &[], unchanged: false },
        Case { name: "timestamp past year 9999", setup: Setup::File("data/orders/future.jsonl", br#"{"order_id": 9, "customer_id": 10, "product_id": 100, "quantity": 1, "amount": 1, "created_at": "99999-01-01T00:00:00Z", "updated_at": "2024-01-01T00:00:00Z"}"#.to_vec()), args: RUN, code: 1, says: &["column 'order_date' (`CAST(to_timestamp(created_at) AS DATE)`) cannot be computed"], never: &[], unchanged: false },
        Case { name: "gold check on a missing column", setup: Setup::Append("    checks:\n      - { name: has_ids, check: not_null, column: nope, severity: critical }\n".into()), args: RUN, code: 1, says: &["check 'has_ids' (not_null on column nope)", "Valid fields are product_id"], never: &["__medallion"], unchanged: false },
        Case { name: "check expression ending in a comment", setup: spec("check: unique, column: order_id, severity: critical }", "check: expression, expr: \"amount > 0 -- positive\", severity: critical }"), args: RUN, code: 0, says: &["\"succeeded\": true"], never: &[], unchanged: false },
    ]
}

/// Every file under the lake with its size (Delta logs included, so versions too).
fn lake_state(ws: &Workspace) -> String {
    format!("{:?}", ws.lake_files("lake"))
}

fn prepare(base: &Path, case: &Case) -> Workspace {
    let ws = Workspace::new();
    let copied = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", base.display()))
        .arg(ws.path())
        .status()
        .unwrap();
    assert!(copied.success());
    match &case.setup {
        Setup::Spec(from, to) => {
            ws.write("pipeline.yaml", &base_spec().replacen(from, to, 1));
        }
        Setup::Append(text) => {
            ws.write("pipeline.yaml", &format!("{}{text}", base_spec()));
        }
        Setup::File(rel, bytes) => {
            let path = ws.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        Setup::Link(target, rel) => {
            std::os::unix::fs::symlink(target, ws.path().join(rel)).unwrap()
        }
        Setup::Dir(rel) => std::fs::create_dir_all(ws.path().join(rel)).unwrap(),
        Setup::Nothing => {}
    }
    ws
}

#[test]
fn hostile_input_gets_a_clear_error_no_panic_and_an_untouched_lake() {
    let base = shop();
    base.write("pipeline.yaml", &base_spec());
    std::fs::remove_file(base.path().join("data/customers.csv")).unwrap();
    base.write("data/crm/customers.csv", CUSTOMERS);
    let first = base.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let ws = prepare(base.path(), case);
        let before = lake_state(&ws);
        let out = ws.medallion(case.args);
        let said = format!("{}\n{}", out.stderr, out.stdout);
        let mut wrong = Vec::new();
        if out.code != case.code {
            wrong.push(format!("exit {} (expected {})", out.code, case.code));
        }
        if said.contains("panicked") {
            wrong.push("panicked".into());
        }
        for text in case.says {
            if !said.contains(text) {
                wrong.push(format!("does not say '{text}'"));
            }
        }
        for text in case.never {
            if said.contains(text) {
                wrong.push(format!("says '{text}'"));
            }
        }
        if case.unchanged && lake_state(&ws) != before {
            wrong.push("the lake changed".into());
        }
        if !wrong.is_empty() {
            let said: String = said.chars().take(1500).collect();
            failures.push(format!("{}: {}\n{said}", case.name, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A one-table spec: `path` read into `bronze.events` of a lake at `lake`.
fn one_table(lake: &str, path: &str) -> String {
    format!(
        "pipeline: confined\nlake: {lake}\nsources:\n  - {{ name: s, format: json, path: \"{path}\" }}\n\
         bronze:\n  - {{ name: events, source: s }}\n"
    )
}

/// Every file of the workspace but the processes' own (logs, etcd's data).
fn workspace_state(ws: &Workspace) -> Vec<(String, u64)> {
    let files = ws.lake_files(".").into_iter();
    files
        .filter(|(f, _)| !f.ends_with(".log") && !f.starts_with("etcd-data"))
        .collect()
}

/// Issue 18: a coordinator runs other people's specs only within the directories and prefixes
/// it was given (`--root`, `--allow-sources`, `--allow-lakes`). Each way out is refused when
/// the spec is sent (submit or deploy), naming the field and line, and nothing is written
/// anywhere; a link that leads a listed file out fails the run before anything is committed.
#[test]
fn a_confined_coordinator_refuses_every_way_out_of_its_directories() {
    let ws = Workspace::new();
    ws.write("data/events/a.jsonl", "{\"id\": 1}\n");
    ws.write("data/mixed/a.jsonl", "{\"id\": 2}\n");
    ws.write("outside/secret.jsonl", "{\"secret\": \"do not read\"}\n");
    let at = |rel: &str| ws.path().join(rel);
    let link = |target: &Path, rel: &str| std::os::unix::fs::symlink(target, at(rel)).unwrap();
    link(&at("outside"), "data/link");
    link(&at("outside"), "lakelink");
    link(&at("outside/secret.jsonl"), "data/mixed/secret.jsonl");
    ws.write("data/x.jsonl", "{\"id\": 3}\n");
    ws.write("outside/x.jsonl", "{\"id\": 4}\n");
    ws.set_env("MEDALLION_ALLOW_SOURCES", "data,s3://raw/events");
    ws.set_env("MEDALLION_ALLOW_LAKES", "lake,s3://lake/confined");
    let cluster = Cluster::start(&ws, 1, 1);
    let deep = "../".repeat(40);
    let root_x = format!("'{}' is outside", at("x.jsonl").display());
    let root_x: &[&str] = &[&root_x];
    // (what, command, spec file, spec, what the error says)
    let cases: Vec<(&str, &str, &str, String, &[&str])> = vec![
        (
            "parent directories",
            "submit",
            "c.yaml",
            one_table("lake", &format!("{deep}etc/*.conf")),
            &["sources[0].path", "'/etc/*.conf'", "allows sources"],
        ),
        (
            "parent directory of data",
            "submit",
            "c.yaml",
            one_table("lake", "data/../outside/*.jsonl"),
            &["sources[0].path", "outside/*.jsonl", "allows sources"],
        ),
        (
            "absolute path",
            "submit",
            "c.yaml",
            one_table("lake", "/etc/passwd"),
            &["c.yaml:4", "'/etc/passwd' is outside"],
        ),
        (
            "absolute path on deploy",
            "deploy",
            "c.yaml",
            one_table("lake", "/etc/hostname"),
            &["'/etc/hostname' is outside"],
        ),
        (
            "linked directory",
            "submit",
            "c.yaml",
            one_table("lake", "data/link/*.jsonl"),
            &["through a symbolic link", "outside"],
        ),
        (
            "file:// URL",
            "submit",
            "c.yaml",
            one_table("lake", "file:///etc/passwd"),
            &["sources[0].path", "'file://' is not a supported store"],
        ),
        (
            "bucket not listed",
            "submit",
            "c.yaml",
            one_table("lake", "s3://raw/other/*.jsonl"),
            &["'s3://raw/other/*.jsonl' is outside", "s3://raw/events/"],
        ),
        (
            "prefix look-alike",
            "submit",
            "c.yaml",
            one_table("lake", "s3://raw/events-secret/x.jsonl"),
            &["is outside"],
        ),
        (
            "dot segments in a URL",
            "submit",
            "c.yaml",
            one_table("lake", "s3://raw/events/../other/x.jsonl"),
            &["dot segments"],
        ),
        (
            "encoded dots in a URL",
            "submit",
            "c.yaml",
            one_table("lake", "s3://raw/events/%2E%2E/other/x.jsonl"),
            &["encoded dots"],
        ),
        (
            "lake at /",
            "submit",
            "c.yaml",
            one_table("/", "data/events/*.jsonl"),
            &["lake", "root of the file system"],
        ),
        (
            "lake under /etc",
            "submit",
            "c.yaml",
            one_table("/etc/medallion", "data/events/*.jsonl"),
            &["lake", "under /etc"],
        ),
        (
            "lake outside",
            "submit",
            "c.yaml",
            one_table("data/lake", "data/events/*.jsonl"),
            &["c.yaml:2", "allows lakes"],
        ),
        (
            "lake through a link",
            "submit",
            "c.yaml",
            one_table("lakelink/lake", "data/events/*.jsonl"),
            &["through a symbolic link", "allows lakes"],
        ),
        (
            "lake in another bucket",
            "submit",
            "c.yaml",
            one_table("s3://lake/other", "data/events/*.jsonl"),
            &["'s3://lake/other' is outside"],
        ),
        (
            "file:// lake",
            "submit",
            "c.yaml",
            one_table("file:///tmp/lake", "data/events/*.jsonl"),
            &["lake", "without 'file://'"],
        ),
        // The client's directory is not the coordinator's: `x.jsonl` next to a spec in
        // `outside/` is the root's `x.jsonl` there, which sources may not read either.
        (
            "client's directory",
            "submit",
            "outside/c.yaml",
            one_table("lake", "x.jsonl"),
            root_x,
        ),
    ];
    let mut failures = Vec::new();
    for (what, command, file, spec, says) in &cases {
        ws.write(file, spec);
        let before = workspace_state(&ws);
        let out = cluster.client(&ws, &[command, file]);
        let mut wrong = Vec::new();
        if out.code != 2 {
            wrong.push(format!("exit {} (expected 2)", out.code));
        }
        for text in *says {
            if !out.stderr.contains(text) {
                wrong.push(format!("does not say '{text}'"));
            }
        }
        if out.stderr.contains("do not read") || out.stderr.contains("panicked") {
            wrong.push("shows what it read, or panicked".into());
        }
        if workspace_state(&ws) != before {
            wrong.push("files changed".into());
        }
        if !wrong.is_empty() {
            failures.push(format!("{what}: {}\n{}", wrong.join("; "), out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
    let audit = cluster.coordinators[0].log_text();
    assert!(!audit.contains("do not read"), "{audit}");

    // A link among a glob's files is found when the run lists them: the run fails, naming
    // the file, before anything is committed.
    ws.write("c.yaml", &one_table("lake", "data/mixed/*.jsonl"));
    let run_id = cluster.submit(&ws, "c.yaml");
    let status = cluster.wait(&ws, &run_id);
    let text = status.to_string();
    assert_eq!(status["state"], "failed", "{status:#}");
    assert!(
        text.contains("secret.jsonl") && text.contains("allows sources in"),
        "{status:#}"
    );
    assert!(!text.contains("do not read"), "{status:#}");
    assert!(!at("lake/bronze/events/_delta_log").exists());
}
