//! The `medallion-coordinator` process: the cluster's brain.
//!
//! Every coordinator serves the client API and the health service, and campaigns in an etcd
//! election. The leader follows the executors registered in etcd, resumes the runs a previous
//! leader left unfinished, and runs submitted pipelines by pushing tasks to executors. A
//! standby waits in the election, answers clients with the leader's address, and reports
//! NOT_SERVING for `medallion.v1.Coordinator` so that a Kubernetes Service routes to the leader
//! only. A leader whose etcd lease expires stops at once (its supervisor restarts it as a
//! standby); on SIGTERM it steps down and the standby takes over the runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use etcd_client::Client;
use medallion_cluster::size::parse_size;
use medallion_cluster::{EtcdArgs, KeptLease, Keys, LogArgs, signal};
use medallion_proto::coordinator_server::CoordinatorServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::BallistaTarget;
use crate::membership::Members;
use crate::remote::RemoteExecutors;
use crate::runs::Runs;
use crate::service::{CoordinatorService, ForwardToLeader, Role};
use crate::store::EtcdRunStore;

#[derive(Parser)]
#[command(
    name = "medallion-coordinator",
    version,
    about = "Medallion coordinator: plans pipeline runs, hands tasks to executors, commits to Delta"
)]
pub struct CoordinatorArgs {
    /// Address to serve gRPC (client API and health) on.
    #[arg(long, env = "MEDALLION_LISTEN", default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// URL clients use to reach this coordinator when it leads, as a standby tells them
    /// [default: http://127.0.0.1:<listen port>].
    #[arg(long, env = "MEDALLION_ADVERTISE")]
    advertise: Option<String>,
    /// Seconds etcd keeps this coordinator's leadership without hearing from it; a standby
    /// takes over at most this long after the leader dies.
    #[arg(long, env = "MEDALLION_LEASE_TTL", default_value_t = 10)]
    lease_ttl: i64,
    /// Port of the Ballista scheduler gold queries run on across the executors; 0: no Ballista.
    #[arg(long, env = "MEDALLION_BALLISTA_PORT", default_value_t = 50050)]
    ballista_port: u16,
    /// `engine: auto` gold tables run on Ballista when two or more executors are up and their
    /// inputs hold at least this much data (e.g. `256MiB`).
    #[arg(long, env = "MEDALLION_BALLISTA_MIN_INPUT", value_parser = parse_size, default_value = "4GiB")]
    ballista_min_input: usize,
    /// Address to serve Prometheus metrics on, at `/metrics`.
    #[arg(long, env = "MEDALLION_METRICS_LISTEN", default_value = "0.0.0.0:9470")]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// What a running coordinator holds, leader or not.
struct Services {
    etcd: Client,
    keys: Keys,
    advertise: String,
    members: Arc<Members>,
    runs: Arc<Runs>,
    role: Arc<Role>,
    ballista: Option<BallistaTarget>,
    health: tonic_health::server::HealthReporter,
    stop_server: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Serves until SIGTERM or until its etcd lease is lost: see the module docs.
pub async fn serve(args: CoordinatorArgs) -> Result<()> {
    let services = start_services(&args).await?;
    let shutdown = signal::shutdown();
    tokio::pin!(shutdown);
    let lease = KeptLease::grant(&services.etcd, args.lease_ttl).await?;
    let lost = lease.lost();
    tokio::select! {
        _ = &mut shutdown => {
            let _ = lease.revoke(&services.etcd).await;
            return services.stop().await;
        }
        _ = lost.cancelled() => bail!("etcd lease expired while standing by"),
        () = campaign(&services, &lease) => {}
    }
    let stop_members = lead(&services, &lease).await?;
    tokio::select! {
        _ = &mut shutdown => {
            // Runs stay "running" in etcd: the next leader resumes them.
            stop_members.cancel();
            services.health.set_not_serving::<CoordinatorServer<CoordinatorService>>().await;
            if let Err(e) = lease.revoke(&services.etcd).await {
                tracing::warn!(error = %e, "could not step down; the standby takes over when the lease expires");
            }
            services.stop().await?;
            tracing::info!("coordinator stopped");
            Ok(())
        }
        _ = lost.cancelled() => bail!("leadership lost: the etcd lease expired"),
    }
}

/// Binds and serves the client API (a standby answers it too), health and metrics.
async fn start_services(args: &CoordinatorArgs) -> Result<Services> {
    let (listener, advertise) =
        medallion_cluster::bind(args.listen, args.advertise.clone()).await?;
    let etcd = args.etcd.connect().await?;
    let keys = args.etcd.keys();
    let members = Members::grpc();
    let ballista = match args.ballista_port {
        0 => None,
        port => Some(
            start_ballista(
                args.listen,
                port,
                &advertise,
                &members,
                args.ballista_min_input,
            )
            .await?,
        ),
    };
    let runs = Runs::new(
        Arc::new(EtcdRunStore::new(
            etcd.clone(),
            keys.clone(),
            args.lease_ttl,
        )),
        Arc::new(RemoteExecutors::new(members.clone())),
        ballista.clone(),
    );
    let role = Role::new(etcd.clone(), keys.clone(), advertise.clone());
    let service = CoordinatorService {
        role: role.clone(),
        runs: runs.clone(),
        members: members.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    let stop_server = CancellationToken::new();
    crate::metrics::init();
    medallion_cluster::metrics::serve(args.metrics_listen, stop_server.clone()).await?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(ForwardToLeader::new(
                CoordinatorServer::new(service),
                role.clone(),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop_server.clone().cancelled_owned(),
            ),
    );
    tracing::info!(address = %advertise, "coordinator serving; campaigning for leadership");
    Ok(Services {
        etcd,
        keys,
        advertise,
        members,
        runs,
        role,
        ballista,
        health,
        stop_server,
        server,
    })
}

impl Services {
    async fn stop(self) -> Result<()> {
        self.stop_server.cancel();
        self.server.await??;
        Ok(())
    }
}

/// Waits until this coordinator is elected leader.
async fn campaign(services: &Services, lease: &KeptLease) {
    let backoff = medallion_cluster::retry::forever(Duration::from_secs(1), Duration::from_secs(1));
    medallion_cluster::retry::until_ok("campaigning for leadership", backoff, || {
        let mut etcd = services.etcd.clone();
        let (key, advertise) = (services.keys.leader(), services.advertise.clone());
        async move { etcd.campaign(key, advertise, lease.id()).await }
    })
    .await;
}

/// Takes over as leader: serves the API, publishes the Ballista scheduler, follows the
/// executors and resumes the runs a previous leader left. Returns what stops following.
async fn lead(services: &Services, lease: &KeptLease) -> Result<CancellationToken> {
    services.role.set_leading();
    services
        .health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    tracing::info!(address = %services.advertise, lease = lease.id(), "elected leader");
    if let Some(ballista) = &services.ballista {
        // The executors' Ballista executors find the scheduler here.
        let options = etcd_client::PutOptions::new().with_lease(lease.id());
        services
            .etcd
            .clone()
            .put(
                services.keys.ballista(),
                ballista.scheduler.clone(),
                Some(options),
            )
            .await
            .context("publishing the Ballista scheduler")?;
    }
    let stop_members = CancellationToken::new();
    let (etcd, keys) = (services.etcd.clone(), services.keys.clone());
    tokio::spawn(
        services
            .members
            .clone()
            .follow(etcd, keys, stop_members.clone()),
    );
    let backoff = medallion_cluster::retry::forever(Duration::from_secs(1), Duration::from_secs(1));
    medallion_cluster::retry::until_ok("reading unfinished runs", backoff, || {
        services.runs.resume()
    })
    .await;
    Ok(stop_members)
}

/// Starts the Ballista scheduler on its own port, next to our gRPC services.
async fn start_ballista(
    listen: SocketAddr,
    port: u16,
    advertise: &str,
    members: &Arc<Members>,
    min_input_bytes: usize,
) -> Result<BallistaTarget> {
    use ballista_core::config::TaskSchedulingPolicy;
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let host = url::Url::parse(advertise)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".into());
    let config = Arc::new(SchedulerConfig {
        bind_host: listen.ip().to_string(),
        bind_port: port,
        external_host: host.clone(),
        // Executors poll for tasks: they need no address the scheduler can dial.
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        // An executor silent for 15 s is dead and its tasks run elsewhere (the executors
        // beat every 5 s); Ballista's default of 180 s stalls queries on a lost executor.
        executor_timeout_seconds: 15,
        expire_dead_executor_interval_seconds: 5,
        override_logical_codec: Some(Arc::new(medallion_lake::ballista::LakeCodec::default())),
        ..Default::default()
    });
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| anyhow::anyhow!("Ballista scheduler: {e}"))?;
    let address = SocketAddr::new(listen.ip(), port);
    tokio::spawn(async move {
        if let Err(e) =
            ballista_scheduler::scheduler_process::start_server(cluster, address, config).await
        {
            tracing::error!(error = %e, "the Ballista scheduler stopped");
        }
    });
    tracing::info!(%address, "Ballista scheduler serving");
    let members = members.clone();
    Ok(BallistaTarget {
        scheduler: format!("{host}:{port}"),
        min_input_bytes: min_input_bytes as u64,
        executors: Arc::new(move || members.list().len()),
    })
}
