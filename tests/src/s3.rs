//! S3-compatible servers on loopback for the object-storage tests: s3s-fs (a server in Rust
//! from crates.io, with authentication; `scripts/test` builds it once into
//! `~/.cache/medallion-tools`) and moto (a Python emulator, for one quick case). Objects are
//! put and buckets made through boto3, a client independent of ours.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::free_port;
use crate::{Workspace, python};

/// The credentials s3s-fs requires.
pub const ACCESS_KEY: &str = "medallion-test";
pub const SECRET_KEY: &str = "medallion-test-secret";

/// An S3 server on a free loopback port, stopped when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    /// s3s-fs storing its buckets as directories under `root`.
    pub fn s3s_fs(root: &Path) -> Self {
        let binary = std::env::var("MEDALLION_S3S_FS").map_or_else(
            |_| {
                let home = std::env::var("HOME").unwrap_or_default();
                PathBuf::from(home).join(".cache/medallion-tools/s3s-fs/bin/s3s-fs")
            },
            PathBuf::from,
        );
        assert!(
            binary.exists(),
            "{} is missing: scripts/test installs it (need_s3_server in scripts/deps.sh)",
            binary.display()
        );
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        Self::started(child, port)
    }

    /// moto's server (it takes any credentials).
    pub fn moto() -> Self {
        let port = free_port();
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
        Self::started(child, port)
    }

    fn started(child: Child, port: u16) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs boto3 code with `s3`, a client of this server, and `args`.
    fn boto3(&self, code: &str, args: &[&str]) {
        let script = format!(
            "import sys, os, boto3\n\
             s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
                 aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}')\n\
             args = sys.argv[2:]\n{code}"
        );
        let out = crate::output(
            Command::new(python())
                .args(["-c", &script, &self.endpoint])
                .args(args),
        );
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.boto3("s3.create_bucket(Bucket=args[0])", &[bucket]);
    }

    /// Puts every file under the local directory `dir` as an object under `bucket/prefix/`.
    pub fn upload(&self, dir: &Path, bucket: &str, prefix: &str) {
        let code = "root, bucket, prefix = args\n\
             for d, _, files in os.walk(root):\n    \
                 for f in files:\n        \
                     p = os.path.join(d, f)\n        \
                     key = prefix + '/' + os.path.relpath(p, root)\n        \
                     s3.upload_file(p, bucket, key)";
        self.boto3(code, &[dir.to_str().unwrap(), bucket, prefix]);
    }

    /// Copies every object of the bucket `from` into the bucket `to`, under the same keys.
    pub fn copy_bucket(&self, from: &str, to: &str) {
        let code = "src, dst = args\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket=src):\n    \
                 for o in page.get('Contents', []):\n        \
                     s3.copy_object(Bucket=dst, Key=o['Key'], CopySource={'Bucket': src, 'Key': o['Key']})";
        self.boto3(code, &[from, to]);
    }

    /// A spec's storage options for this server: where it is, and no credentials (those come
    /// from the environment, see [`S3Server::credentials_into`]).
    pub fn endpoint_options(&self) -> Value {
        json!({
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        })
    }

    /// The storage options of the independent readers: with credentials.
    pub fn reader_options(&self) -> Value {
        let mut options = self.endpoint_options();
        options["AWS_ACCESS_KEY_ID"] = ACCESS_KEY.into();
        options["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY.into();
        options
    }

    /// Gives every process of `ws` where the server is, in the environment, as the Helm
    /// chart's `objectStorage` values do: Ballista executors reach the lake's store only so.
    pub fn endpoint_into(&self, ws: &Workspace) {
        for (key, value) in self.endpoint_options().as_object().unwrap() {
            ws.set_env(key, value.as_str().unwrap());
        }
    }

    /// Gives every process of `ws` the credentials, in the environment.
    pub fn credentials_into(&self, ws: &Workspace) {
        ws.set_env("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        ws.set_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
