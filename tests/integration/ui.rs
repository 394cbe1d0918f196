//! The web UI, in a real browser (headless Chromium through WebDriver, `tests/py/ui_browser.py`)
//! against a real coordinator; and `medallion ui` over a lake run in embedded mode.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use medallion_tests::cluster::Cluster;
use serde_json::Value;

use crate::fixture::{ORDERS_3, SPEC, shop};
use crate::security::token;

/// The shop's gold `slow`: keeps a run going for seconds after the other tables committed.
const SLOW: &str = "  - name: slow\n    sql: SELECT count(*) AS n FROM (SELECT unnest(range(3000000)) \
                    AS v FROM silver.orders) x\n";

/// Where screenshots of every page are left (the copies under `docs/ui` come from here).
fn shots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots")
}

fn axe() -> String {
    let axe = std::env::var("MEDALLION_AXE").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/medallion-tools/axe-core/node_modules/axe-core/axe.min.js")
    });
    assert!(
        std::path::Path::new(&axe).exists(),
        "no axe-core at {axe}: scripts/test installs it (need_browser)"
    );
    axe
}

/// `GET path` on `address` (host:port) with `headers`: the status and the whole response.
fn http_get(address: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n");
    for (name, value) in headers {
        request += &format!("{name}: {value}\r\n");
    }
    write!(stream, "{request}\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response[9..12].parse().unwrap(), response)
}

/// Every table of the shop (with `slow`) and what each reads: the graph must draw these.
fn shop_edges() -> BTreeSet<String> {
    [
        ("source:api", "bronze.orders"),
        ("source:crm", "bronze.customers"),
        ("source:catalog", "bronze.products"),
        ("bronze.orders", "silver.orders"),
        ("bronze.customers", "silver.customers"),
        ("bronze.products", "silver.products"),
        ("silver.orders", "gold.customer_360"),
        ("silver.customers", "gold.customer_360"),
        ("silver.orders", "gold.product_performance"),
        ("silver.products", "gold.product_performance"),
        ("silver.orders", "gold.slow"),
    ]
    .into_iter()
    .map(|(from, to)| format!("{from}>{to}"))
    .collect()
}

/// A coordinator with a finished run, a failed run (a silver column that does not cast) and
/// a live run: a viewer signs in and sees the graph with every table and edge, the failed
/// table marked and its error, the live run's page update itself until the run ends, no
/// buttons to act; an operator triggers a run from the pipeline's page and the CLI sees it;
/// the standby coordinator's UI shows the leader's runs.
/// Every page passes axe-core with no serious or critical violation and fits a 1280x800
/// desktop and a 390x844 phone without sideways scrolling (wide tables scroll in place).
#[test]
fn a_browser_sees_the_graph_runs_failures_and_live_progress_and_triggers_a_run() {
    let ws = shop();
    ws.write("pipeline.yaml", &format!("{SPEC}{SLOW}"));
    let broken = SPEC
        .replace("pipeline: shop", "pipeline: broken")
        .replace("lake: lake", "lake: lake_broken")
        .replace(
            "{ name: email, expr: lower(trim(email)) }",
            "{ name: email, expr: lower(trim(email)), type: bigint }",
        );
    ws.write("broken.yaml", &broken);
    let (viewer, viewer_entry) = token(&ws, "watcher", "viewer");
    let (operator, operator_entry) = token(&ws, "oncall", "operator");
    let (admin, admin_entry) = token(&ws, "ops", "admin");
    let tokens = ws.write(
        "tokens.yaml",
        &format!("{viewer_entry}\n{operator_entry}\n{admin_entry}\n"),
    );
    ws.set_env("MEDALLION_TOKEN", &admin);
    let cluster = Cluster::start_with(&ws, 2, 1, &["--tokens", tokens.to_str().unwrap()]);
    for spec in ["pipeline.yaml", "broken.yaml"] {
        let deploy = cluster.client(&ws, &["deploy", spec]);
        assert_eq!(deploy.code, 0, "{}\n{}", deploy.stderr, cluster.logs());
    }
    let run = |pipeline: &str, wait: bool| {
        let trigger = cluster.client(&ws, &["trigger", pipeline]);
        assert_eq!(trigger.code, 0, "{}\n{}", trigger.stderr, cluster.logs());
        let run_id = trigger.stdout.trim().to_string();
        if wait {
            cluster.client(&ws, &["watch", &run_id, "--output", "json"]);
        }
        run_id
    };
    let finished = run("shop", true);
    let failed = run("broken", true);
    let status = |run_id: &str| -> Value {
        let out = cluster.client(&ws, &["status", run_id, "--output", "json"]);
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.stderr))
    };
    assert_eq!(
        status(&finished)["state"],
        "succeeded",
        "{}",
        cluster.logs()
    );
    assert_eq!(status(&failed)["state"], "failed");
    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let live = run("shop", false);

    let shots = shots_dir();
    let args = serde_json::json!({
        "base": cluster.coordinators[0].ui_url(),
        "viewer": viewer,
        "operator": operator,
        "runs": {"finished": finished, "failed": failed, "live": live},
        "shots": shots,
        "axe": axe(),
    });
    let out = medallion_tests::output(
        Command::new(medallion_tests::python())
            .arg(medallion_tests::py_dir().join("ui_browser.py"))
            .arg(args.to_string()),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Without a token: the sign-in form, nothing else.
    assert_eq!(seen["anonymous_has_form"], true, "{seen:#}");

    // The live run's page changed under the viewer's eyes, without a reload.
    let live_seen = &seen["live"];
    assert_eq!(live_seen["first"]["state"], "running", "{live_seen:#}");
    assert_eq!(live_seen["last"]["state"], "succeeded", "{live_seen:#}");
    assert_eq!(live_seen["same_page"], true, "the page was reloaded");
    assert!(
        live_seen["refreshes"].as_u64().unwrap() >= 1,
        "{live_seen:#}"
    );
    let tables_at = |when: &str| live_seen[when]["finished_tables"].as_u64().unwrap();
    assert!(
        tables_at("last") > tables_at("first") && tables_at("last") == 9,
        "{live_seen:#}"
    );

    // The graph: every source and table, every edge, each node's state.
    let graph = &seen["graph"];
    let nodes: BTreeMap<String, String> = serde_json::from_value(graph["nodes"].clone()).unwrap();
    let edges: BTreeSet<String> = serde_json::from_value(graph["edges"].clone()).unwrap();
    assert_eq!(edges, shop_edges(), "{graph:#}");
    let tables: BTreeSet<String> = shop_edges()
        .iter()
        .flat_map(|e| e.split('>').map(String::from).collect::<Vec<_>>())
        .collect();
    assert_eq!(nodes.keys().cloned().collect::<BTreeSet<_>>(), tables);
    for (node, state) in &nodes {
        let expected = if node.starts_with("source:") {
            "none"
        } else {
            "ok"
        };
        assert_eq!(state, expected, "{node}: {graph:#}");
    }

    // The failed pipeline: silver.orders marked failed, what reads it skipped, the error
    // on the run's page naming the column, the value and its file.
    let broken = &seen["broken_graph"]["nodes"];
    assert_eq!(broken["silver.orders"], "failed", "{broken:#}");
    assert_eq!(broken["gold.customer_360"], "skipped", "{broken:#}");
    assert_eq!(broken["silver.customers"], "ok", "{broken:#}");
    let error = seen["failed_errors"]["silver.orders"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("column 'email'")
            && error.contains("cannot be cast to bigint")
            && error.contains(".jsonl"),
        "{:#}",
        seen["failed_errors"]
    );

    // Each task of the finished run, with the executor that ran it.
    let executors = seen["task_executors"].as_array().unwrap();
    assert!(
        executors.len() >= 8 && executors.iter().all(|e| e == "executor-0"),
        "{executors:?}"
    );

    // The table page: its columns and rows at the latest version.
    assert_eq!(seen["table_preview_rows"], 2, "{seen:#}");
    // Its latest version says which versions of its inputs it was computed from.
    let read = seen["table_history_read"].as_str().unwrap();
    assert!(
        read.contains("silver.customers v") && read.contains("silver.orders v"),
        "{read}"
    );
    assert!(
        seen["table_columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "lifetime_value")
    );
    // In Delta's type names, as Spark shows them.
    let types = seen["table_types"].as_array().unwrap();
    assert!(
        types.iter().any(|t| t == "string") && types.iter().any(|t| t == "long"),
        "{types:?}"
    );

    // Roles: a viewer gets no buttons; an operator triggers a run the CLI then lists.
    assert_eq!(seen["viewer_buttons"], serde_json::json!([]), "{seen:#}");
    let buttons = seen["operator_buttons"].as_array().unwrap();
    assert!(buttons.iter().any(|b| b == "trigger") && buttons.iter().any(|b| b == "pause"));
    let said = seen["trigger_said"].as_str().unwrap();
    let triggered = said
        .strip_prefix("run ")
        .and_then(|s| s.strip_suffix(" queued"))
        .unwrap_or_else(|| panic!("{said}"));
    let listed = cluster.client(&ws, &["runs", "--output", "json"]);
    assert!(
        listed.stdout.contains(triggered),
        "{triggered} not in {}",
        listed.stdout
    );
    cluster.client(&ws, &["watch", triggered]);
    // Cancelled from its page while it ran; or, on a machine slow to get there, ended
    // first, when the page offers no Cancel or says it ended: the CLI agrees with the page.
    let state = status(triggered)["state"].clone();
    match (
        seen["cancel_offered"].as_bool(),
        seen["cancel_said"].as_str(),
    ) {
        (Some(true), Some(said)) if said == format!("run {triggered} cancelled") => {
            assert_eq!(state, "cancelled")
        }
        (Some(true), Some(said)) => {
            assert!(
                said.contains("ended") && state != "cancelled",
                "{said}: {state}"
            )
        }
        (Some(false), None) => assert_ne!(state, "cancelled", "{seen:#}"),
        _ => panic!("{seen:#}"),
    }
    // Paused from the pipelines page: the scheduler has it paused, and the page offers Resume.
    assert_eq!(seen["pause_said"], "shop paused", "{seen:#}");
    assert_eq!(seen["resume_offered"], true);
    // What an action said is shown once, and never comes from the URL.
    assert_eq!(seen["said_in_url"], false);
    assert_eq!(seen["said_after_reload"], false);
    let pipelines = cluster.client(&ws, &["pipelines", "--output", "json"]);
    let pipelines: Value = serde_json::from_str(&pipelines.stdout).unwrap();
    let shop = pipelines
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "shop");
    assert_eq!(shop.unwrap()["paused"], true, "{pipelines:#}");

    // The standby's UI: the same pages, its calls answered by the leader.
    let standby = cluster.coordinators[1].ui_url().replace("http://", "");
    let bearer = format!("Bearer {viewer}");
    let (code, page) = http_get(
        &standby,
        &format!("/runs/{live}"),
        &[("Authorization", &bearer)],
    );
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("data-state=\"succeeded\""), "{page}");
    let (code, page) = http_get(&standby, "/", &[]);
    assert_eq!(code, 401, "no token, no pages: {page}");

    // Accessibility and small screens, every page.
    for (page, sizes) in seen["pages"].as_object().unwrap() {
        for size in ["desktop", "phone"] {
            let checked = &sizes[size];
            let serious: Vec<&Value> = checked["violations"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
                .collect();
            assert!(serious.is_empty(), "{page} ({size}): {serious:#?}");
            assert!(
                checked["overflow"].as_i64().unwrap() <= 1,
                "{page} ({size}) scrolls sideways by {}px",
                checked["overflow"]
            );
            assert!(shots.join(format!("{page}-{size}.png")).exists());
        }
    }
}

/// `medallion ui <spec>` over a lake run in embedded mode: the same pages, from the lake's
/// run history and tables, read-only.
#[test]
fn medallion_ui_shows_an_embedded_lake_from_its_run_history() {
    let ws = shop();
    let first = ws.run("pipeline.yaml");
    assert_eq!(first.code, 0, "{}", first.stderr);
    ws.write("data/orders/orders_3.jsonl", ORDERS_3);
    let second = ws.run("pipeline.yaml");
    assert_eq!(second.code, 0, "{}", second.stderr);
    let run_id = second.report()["run_id"].as_str().unwrap().to_string();

    let mut ui = Command::new(medallion_tests::medallion_bin())
        .args(["ui", "pipeline.yaml", "--listen", "127.0.0.1:0"])
        .current_dir(ws.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(ui.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    let get = |path: &str| http_get(&address, path, &[]);
    let (code, pipelines) = get("/");
    assert_eq!(code, 200, "{pipelines}");
    assert!(
        pipelines.contains(&run_id),
        "the last run is listed: {pipelines}"
    );
    let (code, graph) = get("/pipelines/shop");
    assert_eq!(code, 200, "{graph}");
    for edge in shop_edges().iter().filter(|e| !e.contains("slow")) {
        let drawn = format!("data-edge=\"{}\"", edge.replace('>', "&gt;"));
        assert!(graph.contains(&drawn), "no {edge} in the graph");
    }
    assert!(
        !graph.contains("data-action"),
        "embedded mode has no actions"
    );
    let (code, run) = get(&format!("/runs/{run_id}"));
    assert_eq!(code, 200, "{run}");
    // The second run read orders_3 only: its report says so, from the run history.
    assert!(
        run.contains("data-table=\"bronze.orders\" data-status=\"committed\""),
        "{run}"
    );
    assert!(run.contains("data-table=\"gold.customer_360\""), "{run}");
    assert!(
        run.contains("<td>local</td>"),
        "tasks ran in this process: {run}"
    );
    let (code, table) = get("/pipelines/shop/tables/silver.orders?version=0");
    assert_eq!(code, 200, "{table}");
    assert!(table.contains("Version <strong>0</strong> of 1"), "{table}");
    let (code, _) = get("/pipelines/shop/tables/silver.nope");
    assert_eq!(code, 404);
    let (code, _) = get("/runs/no-such-run");
    assert_eq!(code, 404);
    let _ = ui.kill();
    let _ = ui.wait();
}
