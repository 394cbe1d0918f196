//! The cluster's state in etcd: key layout, connecting, leases kept alive across etcd restarts.
//!
//! Layout, under a prefix (`/medallion` by default) so that clusters can share an etcd:
//!
//! | key                              | value                              | lifetime            |
//! |----------------------------------|------------------------------------|---------------------|
//! | `<p>/executors/<id>`             | `ExecutorInfo` (protobuf)          | executor's lease    |
//! | `<p>/leader/...`                 | leader's client address (election) | leader's lease      |
//! | `<p>/ballista`                   | leader's Ballista scheduler address | leader's lease      |
//! | `<p>/runs/<run>`                 | `RunRecord` (protobuf)             | kept                |
//! | `<p>/tables/<run>/<layer.table>` | the table's report (JSON)          | kept                |
//! | `<p>/tasks/<run>/<task>`         | `TaskRecord` (protobuf)            | kept                |
//! | `<p>/locks/<pipeline>@<lake>/...`| a pipeline's run lock (etcd lock)  | the run's own lease |
//!
//! Values stay small: specs, states and counters, never data.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, KeyValue, WatchOptions};
use tokio_util::sync::CancellationToken;

use crate::tls::TlsArgs;

/// How the binaries reach etcd.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long = "etcd",
        env = "MEDALLION_ETCD",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster's state in etcd.
    #[arg(long, env = "MEDALLION_ETCD_PREFIX", default_value = "/medallion")]
    pub etcd_prefix: String,
    /// PEM CA certificate that signs etcd's (for `https://` endpoints).
    #[arg(long, env = "MEDALLION_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for an etcd that requires one (`--client-cert-auth`).
    #[arg(long, env = "MEDALLION_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of `--etcd-cert`.
    #[arg(long, env = "MEDALLION_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    pub fn keys(&self) -> Keys {
        Keys {
            prefix: self.etcd_prefix.trim_end_matches('/').to_string(),
        }
    }

    /// Connects, waiting for etcd to answer: in a cluster the processes start in any order.
    pub async fn connect(&self) -> Result<Client> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let tls = TlsArgs {
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            ca: self.etcd_ca.clone(),
            server_name: None,
        };
        if let Some(config) = tls.tonic_config()? {
            options = options.with_tls(config);
        }
        let connect = || async {
            let mut client = Client::connect(&self.endpoints, Some(options.clone())).await?;
            client.status().await?;
            Ok::<_, etcd_client::Error>(client)
        };
        let what = format!("connecting to etcd at {}", self.endpoints.join(","));
        let backoff = crate::retry::forever(Duration::from_millis(200), Duration::from_secs(3));
        Ok(crate::retry::until_ok(&what, backoff, connect).await)
    }
}

/// Where each piece of cluster state lives (see the module docs).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn executors(&self) -> String {
        format!("{}/executors/", self.prefix)
    }
    pub fn executor(&self, id: &str) -> String {
        format!("{}/executors/{id}", self.prefix)
    }
    /// The election's name.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    /// The leader's Ballista scheduler, `host:port`, for the executors' Ballista executors.
    pub fn ballista(&self) -> String {
        format!("{}/ballista", self.prefix)
    }
    pub fn runs(&self) -> String {
        format!("{}/runs/", self.prefix)
    }
    pub fn run(&self, run_id: &str) -> String {
        format!("{}/runs/{run_id}", self.prefix)
    }
    pub fn tables(&self, run_id: &str) -> String {
        format!("{}/tables/{run_id}/", self.prefix)
    }
    pub fn table(&self, run_id: &str, table: &str) -> String {
        format!("{}/tables/{run_id}/{table}", self.prefix)
    }
    pub fn task(&self, run_id: &str, task_id: &str) -> String {
        format!("{}/tasks/{run_id}/{task_id}", self.prefix)
    }
    /// The lock one run at a time of a pipeline on a lake holds (`lake` hashed, as it is a URL).
    pub fn deployments(&self) -> String {
        format!("{}/deployments/", self.prefix)
    }
    pub fn deployment(&self, name: &str) -> String {
        format!("{}/deployments/{name}", self.prefix)
    }
    pub fn spec_version(&self, name: &str, version: u32) -> String {
        format!("{}/spec_versions/{name}/{version:08}", self.prefix)
    }
    pub fn run_lock(&self, pipeline: &str, lake: &str) -> String {
        let lake = twox_hash::XxHash64::oneshot(0, lake.as_bytes());
        format!("{}/locks/{pipeline}@{lake:016x}", self.prefix)
    }
}

/// Grants leases and keeps each alive from a thread of its own (see [`KeptLease`]).
#[derive(Clone)]
pub struct Leases {
    client: Client,
    args: EtcdArgs,
}

impl Leases {
    /// Leases granted through `client`, kept alive over connections made from `args`.
    pub fn new(client: Client, args: EtcdArgs) -> Self {
        Self { client, args }
    }

    /// Grants a lease of `ttl` seconds and starts keeping it alive.
    pub async fn grant(&self, ttl: i64) -> Result<KeptLease> {
        let id = self
            .client
            .clone()
            .lease_grant(ttl, None)
            .await
            .context("granting an etcd lease")?
            .id();
        let lease = KeptLease {
            id,
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
        };
        let (args, lost, stop) = (self.args.clone(), lease.lost(), lease.stop.clone());
        std::thread::Builder::new()
            .name(format!("etcd-lease-{id:x}"))
            .spawn(move || keep_alive_on_own_runtime(&args, id, ttl, lost, stop))
            .context("starting the thread that keeps an etcd lease alive")?;
        Ok(lease)
    }
}

/// A lease kept alive in the background until dropped or revoked.
///
/// etcd outages are ridden out: the keep-alive stream is reopened until etcd answers again
/// (a restarted etcd renews its leases). Only etcd saying the lease is gone (TTL 0) counts
/// as losing it; [`KeptLease::lost`] then fires, and the owner must act (an executor registers
/// again, a leader steps down).
///
/// The keep-alive runs on a thread and runtime of its own, over its own connection: the
/// process's runtime also runs queries, and a DataFusion poll that holds every worker for
/// longer than the TTL (one partition's rows built in one batch) would otherwise starve it,
/// and a busy, healthy process would lose its registration or leadership.
#[derive(Debug)]
pub struct KeptLease {
    id: i64,
    lost: CancellationToken,
    stop: CancellationToken,
}

impl KeptLease {
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Cancelled when etcd says the lease is gone.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Revokes the lease: the keys attached to it go at once (a graceful exit).
    pub async fn revoke(self, client: &Client) -> Result<()> {
        self.stop.cancel();
        client.clone().lease_revoke(self.id).await?;
        Ok(())
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The body of a lease's own thread: connects to etcd from a current-thread runtime and keeps
/// the lease alive until it is stopped or lost.
fn keep_alive_on_own_runtime(
    args: &EtcdArgs,
    id: i64,
    ttl: i64,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(lease = id, error = %e, "no runtime to keep the etcd lease alive");
            return lost.cancel();
        }
    };
    runtime.block_on(async {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = args.connect() => connected,
        };
        match connected {
            Ok(client) => keep_alive(client, id, ttl, lost, stop).await,
            Err(e) => {
                tracing::error!(
                    lease = id,
                    error = format!("{e:#}"),
                    "cannot keep the etcd lease alive"
                );
                lost.cancel();
            }
        }
    });
}

async fn keep_alive(
    mut client: Client,
    id: i64,
    ttl: i64,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let period = Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).max(200));
    let mut last_ack = Instant::now();
    let mut warned = false;
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            opened = client.lease_keep_alive(id) => opened,
        };
        if let Ok((mut keeper, mut acks)) = opened {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(period, acks.message()).await {
                    Ok(Ok(Some(ack))) if ack.ttl() > 0 => {
                        if warned {
                            tracing::info!(lease = id, "etcd answers again, lease kept");
                            warned = false;
                        }
                        last_ack = Instant::now();
                    }
                    Ok(Ok(Some(_))) => {
                        tracing::warn!(lease = id, "etcd lease expired");
                        lost.cancel();
                        return;
                    }
                    _ => break,
                }
            }
        }
        if !warned && last_ack.elapsed() > period * 2 {
            tracing::warn!(
                lease = id,
                "etcd does not answer; keeping the lease when it does"
            );
            warned = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period / 2) => {}
        }
    }
}

/// What [`follow`] sees under its prefix.
pub enum Change<'a> {
    /// Every key there now: after the first read, and again after a broken watch.
    All(&'a [KeyValue]),
    Put(&'a KeyValue),
    Deleted(&'a KeyValue),
}

/// Follows the keys under `prefix` until `stop` is cancelled: reads them, then watches from
/// the next revision; when the watch breaks (etcd restarted, history compacted) reads again.
/// `apply` sees every change in order, so a view built from it stays equal to etcd's.
pub async fn follow(
    etcd: Client,
    prefix: String,
    stop: CancellationToken,
    mut apply: impl FnMut(Change<'_>),
) {
    loop {
        if let Err(e) = follow_once(etcd.clone(), &prefix, &stop, &mut apply).await {
            tracing::warn!(prefix, error = %e, "watch of etcd broke; reading again");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn follow_once(
    mut etcd: Client,
    prefix: &str,
    stop: &CancellationToken,
    apply: &mut impl FnMut(Change<'_>),
) -> Result<()> {
    let now = etcd
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = now.header().map_or(0, |h| h.revision());
    apply(Change::All(now.kvs()));
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut watch = etcd.watch(prefix, Some(options)).await?;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = watch.message() => m?,
        };
        let Some(response) = message else {
            bail!("etcd ended the watch")
        };
        if response.canceled() {
            bail!(
                "etcd cancelled the watch (compacted at revision {})",
                response.compact_revision()
            );
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            apply(match event.event_type() {
                EventType::Put => Change::Put(kv),
                EventType::Delete => Change::Deleted(kv),
            });
        }
    }
}
