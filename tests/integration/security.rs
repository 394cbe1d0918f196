//! Security of a cluster (issue 18): who may call the coordinator's client API.

use medallion_proto as proto;
use medallion_proto::coordinator_client::CoordinatorClient;
use medallion_tests::Workspace;
use medallion_tests::cluster::Cluster;
use tonic::Code;
use tonic::transport::Channel;

use crate::fixture::shop;

/// Makes a token with `medallion token`; returns it and its token file entry.
fn token(ws: &Workspace, name: &str, role: &str) -> (String, String) {
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
    // The cluster helper's own calls (waiting for executors, ...) are the admin's.
    ws.set_env("MEDALLION_TOKEN", &admin);
    let cluster = Cluster::start_with(&ws, 1, 1, &["--tokens", file.to_str().unwrap()]);
    let url = cluster.coordinators[0].url();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let viewing = [
        "GetRun",
        "ListRuns",
        "WatchRun",
        "ListExecutors",
        "ListPipelines",
    ];
    let operating = [
        "Submit",
        "CancelRun",
        "Trigger",
        "Backfill",
        "Rerun",
        "SetPaused",
    ];
    let callers: [(&str, Option<&str>, usize); 5] = [
        ("no token", None, 0),
        ("unknown token", Some("not-a-token"), 0),
        ("viewer", Some(&viewer), 1),
        ("operator", Some(&operator), 2),
        ("admin", Some(&admin), 3),
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
    assert!(
        !log.contains(&viewer) && !log.contains(&admin),
        "a token in the log"
    );

    // The CLI: refused without a token (exit code 2, no retrying), served with its file.
    let mut cli = std::process::Command::new(medallion_tests::medallion_bin());
    cli.args(["runs", "--coordinator", &url])
        .current_dir(ws.path());
    let refused = cli.output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("requires a token"), "{stderr}");
    ws.write("viewer.token", &format!("{viewer}\n"));
    let served = cli.args(["--token-file", "viewer.token"]).output().unwrap();
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
}
