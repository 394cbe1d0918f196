//! A Kafka-protocol broker on a free loopback port: tansu (a Rust broker from crates.io that
//! `scripts/deps.sh` builds once into the tools cache) storing into SQLite in a temporary
//! directory, killed with the test. Topics are created and records produced with rskafka, over
//! the Kafka protocol.
//!
//! Not tansu's in-memory engine: in 0.6.0 it keeps record batches as objects named by their
//! first offset, so it answers a fetch from inside a batch with the batches after it, and
//! `ListOffsets` (latest) with the last batch's first offset + 1. A Kafka broker does neither;
//! the SQL engines keep one row per record and answer both as Kafka does.

use std::process::Command;
use std::time::Duration;

use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use crate::cluster::{Proc, free_port, wait_for};

pub struct Broker {
    pub proc: Proc,
    runtime: tokio::runtime::Runtime,
    client: Client,
    _dir: tempfile::TempDir,
}

/// A record to produce: its key and value (`None`: a tombstone).
pub type Message = (Option<String>, Option<String>);

impl Broker {
    pub fn start() -> Self {
        let bin = std::env::var("MEDALLION_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/medallion-tools/tansu/bin/tansu")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(bin);
        command
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir.path());
        let proc = Proc::spawn("tansu", port, dir.path().join("tansu.log"), &mut command);
        wait_for("tansu", Duration::from_secs(60), || proc.listening());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(ClientBuilder::new(vec![format!("127.0.0.1:{port}")]).build())
            .expect("connect to tansu");
        Self {
            proc,
            runtime,
            client,
            _dir: dir,
        }
    }

    /// `host:port` for a spec's `brokers`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proc.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let controller = self.client.controller_client().expect("controller");
        self.runtime
            .block_on(controller.create_topic(name, partitions, 1, 30_000))
            .expect("create topic");
    }

    /// Produces `messages` to one partition, in batches; the offsets they were given.
    pub fn produce(&self, topic: &str, partition: i32, messages: &[Message]) -> Vec<i64> {
        self.runtime.block_on(async {
            let client = self
                .client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("partition client");
            let mut offsets = Vec::new();
            for chunk in messages.chunks(1000) {
                let records = chunk
                    .iter()
                    .map(|(key, value)| Record {
                        key: key.as_ref().map(|k| k.as_bytes().to_vec()),
                        value: value.as_ref().map(|v| v.as_bytes().to_vec()),
                        headers: Default::default(),
                        timestamp: chrono::Utc::now(),
                    })
                    .collect();
                let produced = client
                    .produce(records, Compression::NoCompression)
                    .await
                    .expect("produce");
                offsets.extend(produced);
            }
            offsets
        })
    }
}
