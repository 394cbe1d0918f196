//! Security of a cluster (issue 18): who may call the coordinator's client API, and TLS.

use medallion_proto as proto;
use medallion_proto::coordinator_client::CoordinatorClient;
use std::path::Path;
use std::time::Duration;

use medallion_tests::Workspace;
use medallion_tests::cluster::{Cluster, NODE_NAME, wait_for};
use medallion_tests::prometheus::http_get_with;
use medallion_tests::tls::{Ca, Issued};
use tonic::Code;
use tonic::transport::Channel;

use crate::fixture::shop;

/// Makes a token with `medallion token`; returns it and its token file entry.
pub(crate) fn token(ws: &Workspace, name: &str, role: &str) -> (String, String) {
    let out = ws.medallion(&["token", name, role]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let field = |prefix: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no '{prefix}' in {}", out.stdout))
            .to_string()
    };
    let token = field("token: ");
    let entry = field("entry: ");
    assert!(!entry.contains(&token), "the entry must not hold the token");
    (token, entry)
}

/// The gRPC code each method of the client API answers a caller with `token`; a call that
/// passes the token check reaches the service, which refuses these empty requests in its own
/// way (NOT_FOUND, INVALID_ARGUMENT) or answers them.
async fn codes(url: &str, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let mut client =
        CoordinatorClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            if let Some(value) = &header {
                r.metadata_mut()
                    .insert("authorization", Clone::clone(value));
            }
            Ok(r)
        });
    let code = |result: Result<(), tonic::Status>| result.err().map_or(Code::Ok, |s| s.code());
    vec![
        (
            "GetRun",
            code(
                client
                    .get_run(proto::GetRunRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListRuns",
            code(
                client
                    .list_runs(proto::ListRunsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "WatchRun",
            code(
                client
                    .watch_run(proto::GetRunRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListExecutors",
            code(
                client
                    .list_executors(proto::ListExecutorsRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListPipelines",
            code(
                client
                    .list_pipelines(proto::ListPipelinesRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Submit",
            code(
                client
                    .submit(proto::SubmitRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "CancelRun",
            code(
                client
                    .cancel_run(proto::GetRunRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Trigger",
            code(
                client
                    .trigger(proto::TriggerRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Backfill",
            code(
                client
                    .backfill(proto::BackfillRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Rerun",
            code(client.rerun(proto::RerunRequest::default()).await.map(drop)),
        ),
        (
            "Plan",
            code(client.plan(proto::SubmitRequest::default()).await.map(drop)),
        ),
        (
            "SetPaused",
            code(
                client
                    .set_paused(proto::SetPausedRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Deploy",
            code(
                client
                    .deploy(proto::DeployRequest::default())
                    .await
                    .map(drop),
            ),
        ),
        (
            "Undeploy",
            code(
                client
                    .undeploy(proto::PipelineRequest::default())
                    .await
                    .map(drop),
            ),
        ),
    ]
}

/// Issue 18: the client API was open to anyone who reached its port. With a token file,
/// every RPC answers UNAUTHENTICATED without a token or with an unknown one,
/// PERMISSION_DENIED beyond the token's role, and reaches the service within it (viewer:
/// reads; operator: runs; admin: deployments); the audit log names who was refused what; a
/// rotated token file is read without a restart; the CLI sends its token from a file.
#[test]
fn each_role_may_call_only_what_it_may() {
    let ws = shop();
    let (viewer, viewer_entry) = token(&ws, "dashboards", "viewer");
    let (operator, operator_entry) = token(&ws, "ci", "operator");
    let (admin, admin_entry) = token(&ws, "ops", "admin");
    let file = ws.write(
        "tokens.yaml",
        &format!("{viewer_entry}\n{operator_entry}\n{admin_entry}\n"),
    );
    let jwts = identity_provider(&ws, "jwks.json");
    let jwks = ws.path().join("jwks.json");
    // The cluster helper's own calls (waiting for executors, ...) are the admin's.
    ws.set_env("MEDALLION_TOKEN", &admin);
    let cluster = Cluster::start_with(
        &ws,
        1,
        1,
        &[
            "--tokens",
            file.to_str().unwrap(),
            "--jwt-jwks",
            jwks.to_str().unwrap(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            "medallion",
        ],
    );
    let url = cluster.coordinators[0].url();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let viewing = [
        "GetRun",
        "ListRuns",
        "WatchRun",
        "ListExecutors",
        "ListPipelines",
        "Plan",
    ];
    let operating = [
        "Submit",
        "CancelRun",
        "Trigger",
        "Backfill",
        "Rerun",
        "SetPaused",
    ];
    let jwt = |who: &str| Some(jwts[who].as_str().unwrap());
    let callers: [(&str, Option<&str>, usize); 14] = [
        ("no token", None, 0),
        ("unknown token", Some("not-a-token"), 0),
        ("viewer", Some(&viewer), 1),
        ("operator", Some(&operator), 2),
        ("admin", Some(&admin), 3),
        // JSON Web Tokens of an identity provider, and ones it did not issue or not for us.
        ("JWT viewer", jwt("viewer"), 1),
        ("JWT operator", jwt("operator"), 2),
        ("JWT admin", jwt("admin"), 3),
        ("JWT expired", jwt("expired"), 0),
        ("JWT for another audience", jwt("another audience"), 0),
        ("JWT of another issuer", jwt("another issuer"), 0),
        ("JWT signed by another key", jwt("another key"), 0),
        ("JWT without a role", jwt("no role"), 0),
        ("JWT with a shared secret", jwt("shared secret"), 0),
    ];
    for (who, token, level) in callers {
        for (method, code) in runtime.block_on(codes(&url, token)) {
            let needed = if viewing.contains(&method) {
                1
            } else if operating.contains(&method) {
                2
            } else {
                3
            };
            let refused = [Code::Unauthenticated, Code::PermissionDenied];
            match (level, level >= needed) {
                (0, _) => assert_eq!(code, Code::Unauthenticated, "{who} {method}"),
                (_, false) => assert_eq!(code, Code::PermissionDenied, "{who} {method}"),
                (_, true) => assert!(!refused.contains(&code), "{who} {method}: {code:?}"),
            }
        }
    }
    let log = cluster.coordinators[0].log_text();
    let audited = |caller: &str, method: &str, outcome: &str| {
        log.lines().any(|l| {
            l.contains("medallion::audit")
                && l.contains(&format!("\"caller\":\"{caller}\""))
                && l.contains(&format!("\"method\":\"{method}\""))
                && l.contains(&format!("\"outcome\":\"{outcome}\""))
        })
    };
    assert!(audited("no token", "ListRuns", "denied"), "{log}");
    assert!(audited("unknown token", "Deploy", "denied"), "{log}");
    assert!(audited("dashboards", "Submit", "denied"), "{log}");
    assert!(audited("ci", "Trigger", "allowed"), "{log}");
    assert!(audited("olu@example.com", "Trigger", "allowed"), "{log}");
    assert!(audited("dana@example.com", "Submit", "denied"), "{log}");
    assert!(audited("ada", "Deploy", "allowed"), "{log}");
    assert!(log.contains("ExpiredSignature"), "{log}");
    assert!(
        !log.contains(&viewer) && !log.contains(&admin),
        "a token in the log"
    );

    // The CLI: refused without a token (exit code 2, no retrying), served with its file.
    let mut cli = std::process::Command::new(medallion_tests::medallion_bin());
    cli.args(["runs", "--coordinator", &url])
        .current_dir(ws.path());
    let refused = medallion_tests::output(&mut cli);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("requires a token"), "{stderr}");
    ws.write("viewer.token", &format!("{viewer}\n"));
    let served = medallion_tests::output(cli.args(["--token-file", "viewer.token"]));
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );

    // Rotation: the viewer gets a new token; the old one stops working at once.
    let (rotated, rotated_entry) = token(&ws, "dashboards", "viewer");
    ws.write(
        "tokens.yaml",
        &format!("{rotated_entry}\n{operator_entry}\n{admin_entry}\n"),
    );
    let list = |token: &str| {
        runtime
            .block_on(codes(&url, Some(token)))
            .into_iter()
            .find(|(m, _)| *m == "ListRuns")
            .unwrap()
            .1
    };
    assert_eq!(list(&viewer), Code::Unauthenticated);
    assert_eq!(list(&rotated), Code::Ok);

    // Per-pipeline grants: an operator of the `sales_*` pipelines neither runs nor sees `shop`.
    let made = ws.medallion(&["token", "sales-ci", "operator", "--pipelines", "sales_*"]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    let field = |prefix: &str| {
        let line = made.stdout.lines().find_map(|l| l.strip_prefix(prefix));
        line.unwrap().to_string()
    };
    let (sales, sales_entry) = (field("token: "), field("entry: "));
    assert!(sales_entry.contains("sales_*"), "{sales_entry}");
    ws.write(
        "tokens.yaml",
        &format!("{rotated_entry}\n{operator_entry}\n{admin_entry}\n{sales_entry}\n"),
    );
    let as_sales = |args: &[&str]| {
        let mut cli = std::process::Command::new(medallion_tests::medallion_bin());
        cli.args(args).args(["--coordinator", &url]);
        medallion_tests::Invocation::from(medallion_tests::output(
            cli.env("MEDALLION_TOKEN", &sales).current_dir(ws.path()),
        ))
    };
    let refused = as_sales(&["submit", "pipeline.yaml"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("'sales-ci' is not granted pipeline 'shop'"),
        "{}",
        refused.stderr
    );
    let run_id = cluster.submit(&ws, "pipeline.yaml");
    let seen = as_sales(&["runs", "--output", "json"]);
    assert_eq!(seen.code, 0, "{}", seen.stderr);
    assert!(!seen.stdout.contains(&run_id), "{}", seen.stdout);
    let status = as_sales(&["status", &run_id]);
    assert_eq!(status.code, 2, "{}", status.stderr);
    let cancel = as_sales(&["cancel", &run_id]);
    assert_eq!(cancel.code, 2, "{}", cancel.stderr);
    let admin_sees = cluster.client(&ws, &["runs", "--output", "json"]);
    assert!(admin_sees.stdout.contains(&run_id), "{}", admin_sees.stdout);
    let log = cluster.coordinators[0].log_text();
    assert!(log.contains("pipeline not granted"), "{log}");
}

/// The common name of the certificate the server at `port` presents to a new connection
/// (Python's ssl module: a TLS client nobody here wrote).
fn served_certificate(port: u16, ca: &Path, client: &Issued) -> String {
    let code = "import socket, ssl, sys\n\
                ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                ctx.load_cert_chain(sys.argv[3], sys.argv[4])\n\
                ctx.set_alpn_protocols(['h2'])\n\
                with socket.create_connection(('127.0.0.1', int(sys.argv[1]))) as s:\n\
                \x20   with ctx.wrap_socket(s, server_hostname=sys.argv[5]) as t:\n\
                \x20       print(dict(x[0] for x in t.getpeercert()['subject'])['commonName'])\n";
    let port = port.to_string();
    medallion_tests::run_python(code, &[&port, &ca, &client.cert, &client.key, &NODE_NAME])
        .trim()
        .to_string()
}

/// The issuer of [`identity_provider`]'s tokens.
const ISSUER: &str = "https://idp.example";

/// An identity provider, played by PyJWT (a JWT library nobody here wrote): writes its key
/// set to `<ws>/<jwks>` and returns tokens it signed, by what they are.
fn identity_provider(ws: &medallion_tests::Workspace, jwks: &str) -> serde_json::Value {
    let code = r#"
import json, sys, time, jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
public = json.loads(ECAlgorithm.to_jwk(key.public_key()))
public.update(kid="k1", alg="ES256", use="sig")
open(sys.argv[1], "w").write(json.dumps({"keys": [public]}))
now = int(time.time())
def token(signer, algorithm="ES256", **claims):
    body = {"iss": sys.argv[2], "aud": "medallion", "sub": "u-1", "iat": now, "exp": now + 3600}
    body.update(claims)
    return jwt.encode(body, signer, algorithm=algorithm, headers={"kid": "k1"})
print(json.dumps({
    "viewer": token(key, email="dana@example.com", medallion_role="viewer"),
    "operator": token(key, email="olu@example.com", medallion_role=["viewer", "operator"]),
    "admin": token(key, preferred_username="ada", medallion_role="admin"),
    "expired": token(key, email="old@example.com", medallion_role="admin", iat=now - 7200, exp=now - 3600),
    "another audience": token(key, email="x@example.com", medallion_role="admin", aud="another-app"),
    "another issuer": token(key, email="x@example.com", medallion_role="admin", iss="https://evil.example"),
    "another key": token(other, email="mallory@example.com", medallion_role="admin"),
    "no role": token(key, email="nobody@example.com"),
    "shared secret": token("k" * 32, "HS256", email="x@example.com", medallion_role="admin"),
}))
"#;
    let out = medallion_tests::run_python(code, &[&ws.path().join(jwks), &ISSUER]);
    serde_json::from_str(&out).unwrap()
}

/// Issue 18: TLS on every link. etcd, the coordinator and the executors serve TLS with
/// certificates of one CA and take only callers presenting one (mutual TLS); a pipeline runs
/// through all of it. Plaintext to a TLS port fails, a client that does not know the CA or
/// has no certificate is refused, an executor whose certificate another CA signed cannot
/// register, and a renewed certificate is served without a restart.
#[test]
fn tls_on_every_link_refuses_strangers_and_renews_without_restart() {
    let ws = shop();
    let ca = Ca::new(&ws.path().join("tls"), "cluster");
    let scrape_token = "scrape-3b9e71f0";
    let token_file = ws.write("metrics.token", &format!("{scrape_token}\n"));
    ws.set_env("MEDALLION_METRICS_TOKEN_FILE", token_file.to_str().unwrap());
    let (mut cluster, node) = Cluster::start_secured(&ws, 1, 1, &ca);
    let url = cluster.coordinators[0].url();
    assert!(url.starts_with("https://"), "{url}");

    let run = cluster.client(
        &ws,
        &["submit", "pipeline.yaml", "--wait", "--output", "json"],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, cluster.logs());
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let gold = ws.read_table("lake/gold/customer_360");
    assert_eq!(gold["num_rows"], 2, "{gold:#}");

    // The web UI serves HTTPS with the same certificate (browsers present none): a client
    // that trusts the CA reads its pages; plain HTTP to its port gets none.
    let ui = cluster.coordinators[0].ui_url();
    assert!(ui.starts_with("https://"), "{ui}");
    let code = r#"
import ssl, sys, urllib.request
ui, ca = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False  # the certificate names the node, not 127.0.0.1: the chain is checked
with urllib.request.urlopen(ui + "/runs", context=ctx, timeout=60) as r:
    print(r.status, "succeeded" in r.read().decode())
try:
    urllib.request.urlopen(ui.replace("https://", "http://") + "/runs", timeout=10).read()
    print("plaintext served")
except Exception:
    print("plaintext refused")
"#;
    let seen = medallion_tests::run_python(code, &[&ui, &ca.cert()]);
    assert_eq!(
        seen.trim(),
        "200 True\nplaintext refused",
        "{}",
        cluster.logs()
    );

    // Plaintext to the TLS port, a client that does not trust the CA, one without a
    // certificate, and one whose certificate another CA signed: all refused.
    let other = Ca::new(&ws.path().join("tls-other"), "other");
    let stranger = other.issue("stranger", "stranger", &[NODE_NAME]);
    let (cert, key) = (
        stranger.cert.to_str().unwrap(),
        stranger.key.to_str().unwrap(),
    );
    let refused = [
        (
            "plaintext",
            cluster.client_at(&url.replace("https://", "http://"), &ws, &["runs"]),
        ),
        (
            "unknown CA",
            cluster.client(&ws, &["runs", "--tls-ca", other.cert().to_str().unwrap()]),
        ),
        (
            "no certificate",
            cluster.client_without(
                &url,
                &["MEDALLION_TLS_CERT", "MEDALLION_TLS_KEY"],
                &ws,
                &["runs"],
            ),
        ),
        (
            "certificate of another CA",
            cluster.client(&ws, &["runs", "--tls-cert", cert, "--tls-key", key]),
        ),
    ];
    for (who, out) in &refused {
        assert_ne!(out.code, 0, "{who}: {}", out.stdout);
        assert!(!out.stderr.contains("panicked"), "{who}: {}", out.stderr);
    }
    let log = cluster.coordinators[0].log_text();
    assert!(log.contains("TLS handshake refused"), "{log}");

    // An executor whose certificate another CA signed: etcd does not let it in, so it never
    // registers, and the coordinator never calls it.
    cluster.add_executor_with(&[
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(cluster.executor_ids(&ws).len(), 1, "{}", cluster.logs());
    let stranger_log = cluster.executors[1].log_text();
    assert!(
        stranger_log.contains("connecting to etcd"),
        "{stranger_log}"
    );
    assert!(!stranger_log.contains("registered"), "{stranger_log}");

    // A renewed certificate (same files, as a Secret update writes them) is served to the
    // next connection by the same process.
    let port = cluster.coordinators[0].port;
    assert_eq!(served_certificate(port, &ca.cert(), &node), "node");
    let renewed = ca.issue("node", "node-renewed", &[NODE_NAME]);
    assert_eq!(
        served_certificate(port, &ca.cert(), &renewed),
        "node-renewed"
    );
    assert!(cluster.coordinators[0].alive(), "the coordinator restarted");
    let log = cluster.coordinators[0].log_text();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    let again = cluster.client(&ws, &["runs"]);
    assert_eq!(again.code, 0, "{}", again.stderr);

    // Metrics only for a scraper with the token (the file is read at each scrape).
    let bearer = format!("Authorization: Bearer {scrape_token}");
    for process in [&cluster.coordinators[0], &cluster.executors[0]] {
        let port = process.metrics_port;
        assert_eq!(
            http_get_with(port, "/metrics", &[]).0,
            401,
            "{}",
            process.name
        );
        assert_eq!(
            http_get_with(port, "/metrics", &["Authorization: Bearer wrong"]).0,
            401
        );
        let (status, body) = http_get_with(port, "/metrics", &[&bearer]);
        assert_eq!(status, 200, "{}", process.name);
        assert!(body.contains("medallion_"), "{body}");
    }
    ws.write("metrics.token", "rotated\n");
    let port = cluster.coordinators[0].metrics_port;
    assert_eq!(http_get_with(port, "/metrics", &[&bearer]).0, 401);
    assert_eq!(
        http_get_with(port, "/metrics", &["Authorization: Bearer rotated"]).0,
        200
    );
}

/// Issue 18: a coordinator presents its renewed certificate when it calls executors, without
/// a restart. The executor here takes callers of a second CA only; the coordinator starts
/// with a certificate of the first, and its files are then renewed with one of the second
/// (as cert-manager moving to a new issuer does): the run that follows reaches the executor.
#[test]
fn a_renewed_client_certificate_is_presented_without_restart() {
    let ws = shop();
    let dir = ws.path().join("tls");
    let first = Ca::new(&dir, "first");
    let (mut cluster, node) = Cluster::start_secured(&ws, 1, 0, &first);
    let second = Ca::new(&dir, "second");
    let both = ws.write(
        "tls/both-ca.pem",
        &(std::fs::read_to_string(first.cert()).unwrap()
            + &std::fs::read_to_string(second.cert()).unwrap()),
    );
    // The executor serves with the first CA's certificate (the coordinator trusts it) and
    // takes callers of the second CA only.
    let executor = first.issue("executor", "executor", &[NODE_NAME]);
    cluster.add_executor_with(&[
        "--tls-cert",
        executor.cert.to_str().unwrap(),
        "--tls-key",
        executor.key.to_str().unwrap(),
        "--tls-ca",
        second.cert().to_str().unwrap(),
    ]);
    wait_for("the executor", Duration::from_secs(60), || {
        cluster.executor_ids(&ws).len() == 1
    });

    // The coordinator's files now hold a certificate of the second CA. The command line
    // keeps one of the first (what the coordinator takes) and trusts both.
    let renewed = second.issue("node", "node-renewed", &[NODE_NAME]);
    assert_eq!(renewed.cert, node.cert);
    let cli = first.issue("cli", "cli", &[NODE_NAME]);
    let run = cluster.client(
        &ws,
        &[
            "submit",
            "pipeline.yaml",
            "--wait",
            "--output",
            "json",
            "--tls-cert",
            cli.cert.to_str().unwrap(),
            "--tls-key",
            cli.key.to_str().unwrap(),
            "--tls-ca",
            both.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, cluster.logs());
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert!(cluster.coordinators[0].alive(), "the coordinator restarted");
    let gold = ws.read_table("lake/gold/customer_360");
    assert_eq!(gold["num_rows"], 2, "{gold:#}");
}
