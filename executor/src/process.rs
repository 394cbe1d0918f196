//! The `medallion-executor` process: runs the tasks the leader coordinator pushes to it.
//!
//! It serves the `Executor` gRPC service and the standard health service, registers itself in
//! etcd under a lease (re-registering if the lease is ever lost), and on SIGTERM stops taking
//! tasks, finishes the running ones and revokes its lease so the coordinator forgets it at once.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use medallion_cluster::{EtcdArgs, KeptLease, Leases, LogArgs, ServerArgs, signal};
use medallion_pipeline::size::parse_memory_limit;
use medallion_proto::ExecutorInfo;
use medallion_proto::executor_server::ExecutorServer;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::{Executor, ExecutorService};

#[derive(Clone, Parser)]
#[command(
    name = "medallion-executor",
    version,
    about = "Medallion executor: runs the tasks of pipeline runs for the leader coordinator"
)]
pub struct ExecutorArgs {
    #[command(flatten)]
    server: ServerArgs<7071, 9471>,
    /// This executor's name in the cluster [default: <hostname>-<pid>].
    #[arg(long, env = "MEDALLION_EXECUTOR_ID")]
    id: Option<String>,
    /// Tasks run at the same time [default: the number of CPUs].
    #[arg(long, env = "MEDALLION_SLOTS")]
    slots: Option<usize>,
    /// Memory the running tasks' queries share (e.g. `2GiB`); they spill to disk beyond it.
    #[arg(long, env = "MEDALLION_MEMORY_LIMIT", value_parser = parse_memory_limit)]
    memory_limit: Option<usize>,
    /// Seconds to let running tasks finish after SIGTERM.
    #[arg(long, env = "MEDALLION_DRAIN_TIMEOUT", default_value_t = 120)]
    drain_timeout: u64,
    #[command(flatten)]
    ballista: BallistaFlags,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// The Ballista executor in this process, which runs its share of distributed gold queries.
#[derive(Clone, clap::Args)]
struct BallistaFlags {
    /// Ballista scheduler, `host:port` [default: the one the leader coordinator publishes in
    /// etcd].
    #[arg(long, env = "MEDALLION_BALLISTA_SCHEDULER")]
    ballista_scheduler: Option<String>,
    /// Arrow Flight port of the Ballista executor (shuffle data and results).
    #[arg(long, env = "MEDALLION_BALLISTA_PORT", default_value_t = 50051)]
    ballista_port: u16,
    /// gRPC port of the Ballista executor.
    #[arg(long, env = "MEDALLION_BALLISTA_GRPC_PORT", default_value_t = 50052)]
    ballista_grpc_port: u16,
    /// Ballista task slots [default: --slots].
    #[arg(long, env = "MEDALLION_BALLISTA_VCORES")]
    ballista_vcores: Option<usize>,
    /// Directory for Ballista's shuffle files [default: a temporary directory].
    #[arg(long, env = "MEDALLION_BALLISTA_WORK_DIR")]
    ballista_work_dir: Option<String>,
    /// Run no Ballista executor in this process.
    #[arg(long, env = "MEDALLION_NO_BALLISTA")]
    no_ballista: bool,
}

/// Serves until SIGTERM: see the module docs.
pub async fn serve(args: ExecutorArgs) -> Result<()> {
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let service = ExecutorService::new(Executor::new(args.memory_limit)?, slots);
    let bound = args.server.bind().await?;
    let info = ExecutorInfo {
        id: args.id.clone().unwrap_or_else(default_id),
        address: bound.advertise.clone(),
        slots: slots as u32,
        started_ms: chrono::Utc::now().timestamp_millis(),
        memory_limit: args.memory_limit.unwrap_or(0) as u64,
    };
    crate::metrics::init();
    let server = bound
        .serve(Routes::new(ExecutorServer::new(service.clone())))
        .await?;
    server
        .health
        .set_serving::<ExecutorServer<ExecutorService>>()
        .await;
    tracing::info!(id = %info.id, address = %info.address, slots, "executor serving");

    let etcd = args.etcd.connect().await?;
    let keys = args.etcd.keys();
    if !args.ballista.no_ballista {
        // In the background: waiting for the leader's scheduler must not hold up registration.
        let (args, info, etcd, keys) = (args.clone(), info.clone(), etcd.clone(), keys.clone());
        let stop = server.stopping();
        tokio::spawn(async move {
            if let Err(e) = start_ballista(&args, &info, &etcd, &keys, stop).await {
                tracing::error!(
                    error = format!("{e:#}"),
                    "no Ballista executor in this process"
                );
            }
        });
    }
    let ttl = args.server.lease_ttl;
    let leases = Leases::new(etcd.clone(), args.etcd.clone());
    let lease = register_until_shutdown(&etcd, &leases, &keys, &info, ttl, &service).await?;
    server
        .health
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
    server.stop().await?;
    service.remove_spill_files();
    tracing::info!("executor stopped");
    Ok(())
}

/// Keeps this executor registered in etcd until SIGTERM; registers again whenever etcd loses
/// the lease (abandoning the running tasks, which the coordinator has given to others).
/// Returns the lease to revoke once drained.
async fn register_until_shutdown(
    etcd: &etcd_client::Client,
    leases: &Leases,
    keys: &medallion_cluster::Keys,
    info: &ExecutorInfo,
    ttl: i64,
    service: &ExecutorService,
) -> Result<KeptLease> {
    let shutdown = signal::shutdown();
    tokio::pin!(shutdown);
    loop {
        let lease = leases.grant(ttl).await?;
        etcd.clone()
            .put(
                keys.executor(&info.id),
                info.encode_to_vec(),
                Some(etcd_client::PutOptions::new().with_lease(lease.id())),
            )
            .await
            .context("registering in etcd")?;
        tracing::info!(lease = lease.id(), ttl, "registered in etcd");
        let lost = lease.lost();
        tokio::select! {
            _ = &mut shutdown => return Ok(lease),
            _ = lost.cancelled() => {
                tracing::warn!(running = service.running(), "registration lost; abandoning the running tasks and registering again");
                service.abandon_running();
            }
        }
    }
}

fn default_id() -> String {
    let host = medallion_cluster::hostname().unwrap_or_else(|| "executor".into());
    format!("{host}-{}", std::process::id())
}

/// The runtime of each Ballista task: spilling under `work_dir`, reaching the lake's object
/// store from this process's environment ([`medallion_lake::ballista::LakeStores`]).
fn ballista_runtime(work_dir: Option<String>) -> ballista_core::RuntimeProducer {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    let stores = std::sync::Arc::new(medallion_lake::ballista::LakeStores::default());
    let work_dir = work_dir.map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    std::sync::Arc::new(move |_| {
        let runtime = RuntimeEnvBuilder::new()
            .with_temp_file_path(work_dir.clone())
            .with_object_store_registry(stores.clone())
            .build()?;
        Ok(std::sync::Arc::new(runtime))
    })
}

/// Starts this process's Ballista executor against `--ballista-scheduler`, or else the
/// scheduler of whichever coordinator leads ([`scheduler_link`]).
async fn start_ballista(
    args: &ExecutorArgs,
    info: &ExecutorInfo,
    etcd: &etcd_client::Client,
    keys: &medallion_cluster::Keys,
    stop: CancellationToken,
) -> Result<()> {
    use ballista_core::config::TaskSchedulingPolicy;
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    let flags = &args.ballista;
    let (host, port) = match &flags.ballista_scheduler {
        Some(scheduler) => scheduler
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .with_context(|| format!("Ballista scheduler '{scheduler}' is not host:port"))?,
        None => {
            // Ballista gives up on a scheduler it cannot reach at start: wait for a leader.
            while etcd
                .clone()
                .get(keys.ballista(), None)
                .await?
                .kvs()
                .is_empty()
            {
                tracing::info!("waiting for the leader to publish its Ballista scheduler");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let link = crate::scheduler_link::start(etcd.clone(), keys.ballista(), stop).await?;
            (link.ip().to_string(), link.port())
        }
    };
    let external = url::Url::parse(&info.address)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".into());
    let config = ExecutorProcessConfig {
        executor_id: info.id.clone(),
        bind_host: args.server.listen.ip().to_string(),
        external_host: Some(external),
        port: flags.ballista_port,
        grpc_port: flags.ballista_grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 60,
        vcores: flags.ballista_vcores.unwrap_or(info.slots as usize),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        // The scheduler expires an executor after 15 s without a beat.
        executor_heartbeat_interval_seconds: 5,
        work_dir: flags.ballista_work_dir.clone(),
        override_logical_codec: Some(std::sync::Arc::new(
            medallion_lake::ballista::LakeCodec::default(),
        )),
        override_runtime_producer: Some(ballista_runtime(flags.ballista_work_dir.clone())),
        ..Default::default()
    };
    tracing::info!(
        scheduler = flags
            .ballista_scheduler
            .as_deref()
            .unwrap_or("the leader's"),
        port = flags.ballista_port,
        "starting the Ballista executor"
    );
    tokio::spawn(async move {
        if let Err(e) = start_executor_process(std::sync::Arc::new(config)).await {
            tracing::error!(error = %e, "the Ballista executor stopped");
        }
    });
    Ok(())
}
