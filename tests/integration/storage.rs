//! A lake on object storage: `s3://` with storage options, against a real S3 protocol server
//! (moto) on loopback, read back by both independent readers over S3.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medallion_tests::{metric, python, read_delta};

use crate::fixture::{SPEC, shop};

/// An S3 server on a free loopback port, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto (tests/py/requirements.txt)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    fn create_bucket(&self, bucket: &str) {
        let url = format!("{}/{bucket}", self.endpoint);
        let status = Command::new(python())
            .args([
                "-c",
                "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='PUT'))",
                &url,
            ])
            .status()
            .unwrap();
        assert!(status.success(), "could not create bucket {bucket}");
    }

    fn storage_options(&self) -> serde_json::Value {
        serde_json::json!({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn lake_on_s3_takes_storage_options() {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let options = s3.storage_options();
    let ws = shop();
    let lake = format!("lake:\n  root: s3://lake/shop\n  storage_options: {options}\n");
    ws.write("pipeline.yaml", &SPEC.replace("lake: lake\n", &lake));

    let run = ws.run("pipeline.yaml");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = run.report();
    assert_eq!(metric(&report, "silver.orders", "rows_written"), 3);
    assert!(
        !ws.path().join("lake").exists(),
        "nothing may be written locally"
    );

    // Second run: bronze finds its ingested files in the S3 table, silver merges there.
    ws.write("data/orders/orders_3.jsonl", crate::fixture::ORDERS_3);
    let again = ws.run("pipeline.yaml").report();
    assert_eq!(again["succeeded"], true, "{again:#}");
    assert_eq!(metric(&again, "bronze.orders", "files_read"), 1);
    assert_eq!(metric(&again, "silver.orders", "rows_inserted"), 1);

    let read = |table: &str| read_delta(&format!("s3://lake/shop/{table}"), Some(&options));
    let silver = read("silver/orders");
    assert_eq!(silver["readers_agree"], true, "{silver:#}");
    assert_eq!(silver["num_rows"], 4);
    let gold = read("gold/customer_360");
    assert_eq!(gold["readers_agree"], true);
    assert_eq!(gold["num_rows"], 2);
}
