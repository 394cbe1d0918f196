//! `medallion-executor`: runs the tasks the leader coordinator pushes to it.
//!
//! It serves the `Executor` gRPC service and the standard health service, registers itself in
//! etcd under a lease (re-registering if the lease is ever lost), and on SIGTERM stops taking
//! tasks, finishes the running ones and revokes its lease so the coordinator forgets it at once.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use medallion_cluster::size::parse_size;
use medallion_cluster::{EtcdArgs, KeptLease, LogArgs, signal};
use medallion_executor::{Executor, ExecutorService};
use medallion_proto::ExecutorInfo;
use medallion_proto::executor_server::ExecutorServer;
use prost::Message;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "medallion-executor",
    version,
    about = "Medallion executor: runs the tasks of pipeline runs for the leader coordinator"
)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "MEDALLION_LISTEN", default_value = "0.0.0.0:7071")]
    listen: SocketAddr,
    /// URL the coordinator calls this executor at [default: http://127.0.0.1:<listen port>];
    /// in Kubernetes, the pod's IP.
    #[arg(long, env = "MEDALLION_ADVERTISE")]
    advertise: Option<String>,
    /// This executor's name in the cluster [default: <hostname>-<pid>].
    #[arg(long, env = "MEDALLION_EXECUTOR_ID")]
    id: Option<String>,
    /// Tasks run at the same time [default: the number of CPUs].
    #[arg(long, env = "MEDALLION_SLOTS")]
    slots: Option<usize>,
    /// Memory the running tasks' queries share (e.g. `2GiB`); they spill to disk beyond it.
    #[arg(long, env = "MEDALLION_MEMORY_LIMIT", value_parser = parse_size)]
    memory_limit: Option<usize>,
    /// Seconds etcd keeps this executor registered without hearing from it.
    #[arg(long, env = "MEDALLION_LEASE_TTL", default_value_t = 10)]
    lease_ttl: i64,
    /// Seconds to let running tasks finish after SIGTERM.
    #[arg(long, env = "MEDALLION_DRAIN_TIMEOUT", default_value_t = 120)]
    drain_timeout: u64,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("info");
    medallion_cluster::exit_code("executor", serve(args).await)
}

async fn serve(args: Args) -> Result<()> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let service = ExecutorService::new(Executor::new(args.memory_limit)?, slots);
    let (listener, address) = medallion_cluster::bind(args.listen, args.advertise.clone()).await?;
    let info = ExecutorInfo {
        id: args.id.clone().unwrap_or_else(default_id),
        address,
        slots: slots as u32,
        started_ms: chrono::Utc::now().timestamp_millis(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExecutorServer<ExecutorService>>()
        .await;
    let stop_server = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop_server.clone();
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(ExecutorServer::new(service.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.cancelled_owned(),
            )
    });
    tracing::info!(id = %info.id, address = %info.address, slots, "executor serving");

    let etcd = args.etcd.connect().await?;
    let keys = args.etcd.keys();
    let shutdown = signal::shutdown();
    tokio::pin!(shutdown);
    // Registered until shutdown; registers again whenever etcd loses the lease.
    let lease = loop {
        let lease = KeptLease::grant(&etcd, args.lease_ttl).await?;
        etcd.clone()
            .put(
                keys.executor(&info.id),
                info.encode_to_vec(),
                Some(etcd_client::PutOptions::new().with_lease(lease.id())),
            )
            .await
            .context("registering in etcd")?;
        tracing::info!(
            lease = lease.id(),
            ttl = args.lease_ttl,
            "registered in etcd"
        );
        let lost = lease.lost();
        tokio::select! {
            _ = &mut shutdown => break lease,
            _ = lost.cancelled() => tracing::warn!("registration lost; registering again"),
        }
    };

    health
        .set_not_serving::<ExecutorServer<ExecutorService>>()
        .await;
    tracing::info!(
        running = service.running(),
        "draining: finishing running tasks"
    );
    if tokio::time::timeout(Duration::from_secs(args.drain_timeout), service.drain())
        .await
        .is_err()
    {
        tracing::warn!(
            running = service.running(),
            "drain timed out; leaving anyway"
        );
    }
    if let Err(e) = lease.revoke(&etcd).await {
        tracing::warn!(error = %e, "could not revoke the lease; it expires by itself");
    }
    stop_server.cancel();
    server.await??;
    tracing::info!("executor stopped");
    Ok(())
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "executor".into());
    format!("{host}-{}", std::process::id())
}
