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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use etcd_client::Client;
use medallion_cluster::server::Serving;
use medallion_cluster::{EtcdArgs, KeptLease, Keys, Leases, LogArgs, ServerArgs, signal};
use medallion_pipeline::Confinement;
use medallion_pipeline::size::{parse_memory_limit, parse_size};
use medallion_proto::coordinator_server::CoordinatorServer;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::BallistaTarget;
use crate::auth::{Authenticate, Identities, Jwt, JwtArgs, Tokens};
use crate::flight::LakeFlight;
use crate::membership::Members;
use crate::remote::RemoteExecutors;
use crate::runs::Runs;
use crate::scheduler::Scheduler;
use crate::service::{CoordinatorService, ForwardToLeader, Gated, Role};
use crate::store::{EtcdRunStore, RunStore};
use crate::ui::ClusterConsole;
use arrow_flight::flight_service_server::FlightServiceServer;

#[derive(Parser)]
#[command(
    name = "medallion-coordinator",
    version,
    about = "Medallion coordinator: plans pipeline runs, hands tasks to executors, commits to Delta"
)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    server: ServerArgs<7070, 9470>,
    /// Port of the Ballista scheduler gold queries run on across the executors; 0: no Ballista.
    #[arg(long, env = "MEDALLION_BALLISTA_PORT", default_value_t = 50050)]
    ballista_port: u16,
    /// `engine: auto` gold tables run on Ballista when two or more executors are up and their
    /// inputs hold at least this much data (e.g. `256MiB`).
    #[arg(long, env = "MEDALLION_BALLISTA_MIN_INPUT", value_parser = parse_size, default_value = "4GiB")]
    ballista_min_input: usize,
    /// Ended runs are kept in etcd this long (`medallion runs`, `status`), then forgotten;
    /// every run's summary stays in its lake's run history (`<lake>/_medallion/runs`).
    #[arg(long, env = "MEDALLION_RUN_RETENTION", value_parser = humantime::parse_duration, default_value = "7d")]
    run_retention: Duration,
    /// A token file (names, roles and SHA-256 of bearer tokens; see `medallion token new`):
    /// the client API then answers only calls with a token, each within its role. Without
    /// it, anyone who reaches the port may call everything.
    #[arg(long, env = "MEDALLION_TOKENS")]
    tokens: Option<PathBuf>,
    #[command(flatten)]
    jwt: JwtArgs,
    /// The directory relative paths in specs resolve against (a client's directory means
    /// nothing here); sources and lakes stay under it unless `--allow-sources` and
    /// `--allow-lakes` say otherwise.
    #[arg(long, env = "MEDALLION_ROOT", default_value = ".")]
    root: PathBuf,
    /// Where sources may be read: directories (relative ones under `--root`) and object-store
    /// prefixes (`s3://bucket/raw`), comma-separated. Default: `--root`.
    #[arg(long, env = "MEDALLION_ALLOW_SOURCES", value_delimiter = ',')]
    allow_sources: Vec<String>,
    /// Where lakes may be: directories and object-store prefixes, as `--allow-sources`.
    #[arg(long, env = "MEDALLION_ALLOW_LAKES", value_delimiter = ',')]
    allow_lakes: Vec<String>,
    /// Where the web UI listens: HTTPS with the `--tls-cert` certificate, else plain HTTP
    /// (then bind it to a private address, or expose it through an ingress with TLS).
    #[arg(long, env = "MEDALLION_UI_LISTEN", default_value_t = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 7080)))]
    ui_listen: SocketAddr,
    /// Serve no web UI.
    #[arg(long, env = "MEDALLION_NO_UI")]
    no_ui: bool,
    /// Memory the queries of commits share (quality checks over a table's next version,
    /// merges; e.g. `2GiB`): they spill to disk beyond it. Unbounded when not given.
    #[arg(long, env = "MEDALLION_MEMORY_LIMIT", value_parser = parse_memory_limit)]
    memory_limit: Option<usize>,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// What a running coordinator holds, leader or not.
struct Services {
    etcd: Client,
    leases: Leases,
    keys: Keys,
    advertise: String,
    members: Arc<Members>,
    runs: Arc<Runs>,
    scheduler: Arc<Scheduler>,
    role: Arc<Role>,
    ballista: Option<BallistaTarget>,
    server: Serving,
}

/// Serves until SIGTERM or until its etcd lease is lost: see the module docs.
pub async fn serve(args: CoordinatorArgs) -> Result<()> {
    let services = start_services(&args).await?;
    let shutdown = signal::shutdown();
    tokio::pin!(shutdown);
    let lease = services.leases.grant(args.server.lease_ttl).await?;
    let lost = lease.lost();
    tokio::select! {
        _ = &mut shutdown => {
            let _ = lease.revoke(&services.etcd).await;
            return services.server.stop().await;
        }
        _ = lost.cancelled() => bail!("etcd lease expired while standing by"),
        () = campaign(&services, &lease) => {}
    }
    let stop_members = lead(&services, &lease).await?;
    tokio::select! {
        _ = &mut shutdown => {
            // Runs stay "running" in etcd: the next leader resumes them.
            stop_members.cancel();
            services.server.health.set_not_serving::<CoordinatorServer<CoordinatorService>>().await;
            if let Err(e) = lease.revoke(&services.etcd).await {
                tracing::warn!(error = %e, "could not step down; the standby takes over when the lease expires");
            }
            services.server.stop().await?;
            tracing::info!("coordinator stopped");
            Ok(())
        }
        _ = lost.cancelled() => bail!("leadership lost: the etcd lease expired"),
    }
}

/// Binds and serves the client API (a standby answers it too), health and metrics.
async fn start_services(args: &CoordinatorArgs) -> Result<Services> {
    let bound = args.server.bind().await?;
    let advertise = bound.advertise.clone();
    let etcd = args.etcd.connect().await?;
    let leases = Leases::new(etcd.clone(), args.etcd.clone());
    let keys = args.etcd.keys();
    let tls = args.server.tls.client()?;
    let members = Members::grpc(tls.clone());
    let ballista = match args.ballista_port {
        0 => None,
        port => Some(
            start_ballista(
                args.server.listen,
                port,
                &advertise,
                &members,
                args.ballista_min_input,
            )
            .await?,
        ),
    };
    let store: Arc<dyn RunStore> = Arc::new(EtcdRunStore::new(
        etcd.clone(),
        leases.clone(),
        keys.clone(),
        args.server.lease_ttl,
    ));
    let confinement = Confinement::new(&args.root, &args.allow_sources, &args.allow_lakes)
        .map_err(|e| anyhow::anyhow!("--root/--allow-sources/--allow-lakes: {e}"))?;
    tracing::info!(root = %confinement.root().display(), sources = ?args.allow_sources, lakes = ?args.allow_lakes, "pipelines are confined");
    let runs = Runs::new(
        store.clone(),
        Arc::new(RemoteExecutors::new(members.clone())),
        ballista.clone(),
        Arc::new(confinement),
        medallion_lake::runtime::query_runtime(args.memory_limit, None)?,
    );
    let scheduler = Scheduler::new(runs.clone(), store, args.run_retention);
    let role = Role::new(etcd.clone(), keys.clone(), advertise.clone(), tls);
    let service = CoordinatorService {
        role: role.clone(),
        runs: runs.clone(),
        scheduler: scheduler.clone(),
        members: members.clone(),
    };
    crate::metrics::init();
    let api = Gated::new(
        CoordinatorServer::new(service),
        ForwardToLeader(role.clone()),
    );
    let identities = Identities {
        tokens: args.tokens.as_deref().map(Tokens::load).transpose()?,
        jwt: Jwt::start(&args.jwt).await?,
    };
    let identities =
        (identities.tokens.is_some() || identities.jwt.is_some()).then(|| Arc::new(identities));
    let flight = FlightServiceServer::new(LakeFlight::new(scheduler.clone()));
    let routes = if let Some(identities) = &identities {
        let gate = Authenticate(identities.clone());
        Routes::new(Gated::new(api, gate.clone())).add_service(Gated::new(flight, gate))
    } else {
        tracing::warn!(
            "neither --tokens nor --jwt-jwks: the client API is open to anyone who reaches its port"
        );
        Routes::new(api).add_service(flight)
    };
    let console = ClusterConsole::new(routes.clone(), scheduler.clone(), identities);
    let server = bound.serve(routes).await?;
    if !args.no_ui {
        let tls = args.server.tls.web()?;
        crate::ui::serve(args.ui_listen, Arc::new(console), tls, server.stopping()).await?;
    }
    server
        .health
        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    tracing::info!(address = %advertise, "coordinator serving; campaigning for leadership");
    Ok(Services {
        etcd,
        leases,
        keys,
        advertise,
        members,
        runs,
        scheduler,
        role,
        ballista,
        server,
    })
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
    crate::metrics::leading(true);
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
    // The API answers only now: a client that follows a run across the failover must find
    // it running here, not read its record as the previous leader left it.
    services.role.set_leading();
    services
        .server
        .health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    // After the resume, so runs a previous leader queued count toward max_active_runs.
    tokio::spawn(services.scheduler.clone().run(stop_members.child_token()));
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
