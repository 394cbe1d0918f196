//! The Kubernetes chart and manifests, checked offline by `k8s/tests/check_chart.py` (helm lint,
//! the Kubernetes schemas of several versions, cross-object checks, the binaries' own flags),
//! and its self-test: every check must catch a copy of the chart broken its way.

use std::process::Command;

use medallion_tests::{binary, python};

/// Runs the checker with the workspace's binaries; returns its output, asserting success.
fn check_chart(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../k8s/tests/check_chart.py");
    let bin_dir = binary("medallion-coordinator")
        .parent()
        .unwrap()
        .to_path_buf();
    let out = medallion_tests::output(
        Command::new(python())
            .arg(script)
            .arg("--bin-dir")
            .arg(bin_dir)
            .args(args),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check_chart.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn chart_and_manifests_pass_every_check() {
    let out = check_chart(&[]);
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn every_check_catches_a_broken_chart() {
    let out = check_chart(&["--self-test"]);
    assert!(!out.contains("MISSED"), "{out}");
    for check in [
        "lint:",
        "values schema:",
        "schema:",
        "cross:",
        "flags:",
        "image:",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("caught: {check}"))),
            "no break of {check}:\n{out}"
        );
    }
}
