//! `medallion-coordinator`: the cluster's brain.
//!
//! Every coordinator serves the client API and the health service, and campaigns in an etcd
//! election. The leader follows the executors registered in etcd, resumes the runs a previous
//! leader left unfinished, and runs submitted pipelines by pushing tasks to executors. A
//! standby waits in the election, answers clients with the leader's address, and reports
//! NOT_SERVING for `medallion.v1.Coordinator` so that a Kubernetes Service routes to the leader
//! only. A leader whose etcd lease expires stops at once (its supervisor restarts it as a
//! standby); on SIGTERM it steps down and the standby takes over the runs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use medallion_cluster::{EtcdArgs, KeptLease, LogArgs, signal};
use medallion_coordinator::membership::Members;
use medallion_coordinator::remote::RemoteExecutors;
use medallion_coordinator::runs::Runs;
use medallion_coordinator::service::{CoordinatorService, Role};
use medallion_coordinator::store::RunStore;
use medallion_proto::coordinator_server::CoordinatorServer;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "medallion-coordinator",
    version,
    about = "Medallion coordinator: plans pipeline runs, hands tasks to executors, commits to Delta"
)]
struct Args {
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
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    args.log.init("info");
    medallion_cluster::exit_code("coordinator", serve(args).await)
}

async fn serve(args: Args) -> Result<()> {
    let (listener, advertise) =
        medallion_cluster::bind(args.listen, args.advertise.clone()).await?;
    let etcd = args.etcd.connect().await?;
    let keys = args.etcd.keys();

    let members = Arc::new(Members::default());
    let runs = Runs::new(
        RunStore::new(etcd.clone(), keys.clone()),
        Arc::new(RemoteExecutors::new(members.clone())),
    );
    let role = Role::new(etcd.clone(), keys.clone());
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
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(CoordinatorServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop_server.clone().cancelled_owned(),
            ),
    );
    tracing::info!(address = %advertise, "coordinator serving; campaigning for leadership");

    let shutdown = signal::shutdown();
    tokio::pin!(shutdown);
    let lease = KeptLease::grant(&etcd, args.lease_ttl).await?;
    let lost = lease.lost();
    loop {
        let mut client = etcd.clone();
        let campaign = client.campaign(keys.leader(), advertise.as_str(), lease.id());
        tokio::select! {
            _ = &mut shutdown => {
                let _ = lease.revoke(&etcd).await;
                stop_server.cancel();
                server.await??;
                return Ok(());
            }
            _ = lost.cancelled() => bail!("etcd lease expired while standing by"),
            elected = campaign => match elected {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }

    role.set_leading();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    tracing::info!(address = %advertise, lease = lease.id(), "elected leader");
    let stop_members = CancellationToken::new();
    tokio::spawn(members.follow(etcd.clone(), keys.clone(), stop_members.clone()));
    while let Err(e) = runs.resume().await {
        tracing::warn!(
            error = format!("{e:#}"),
            "cannot read unfinished runs yet; retrying"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    tokio::select! {
        _ = &mut shutdown => {
            // Runs stay "running" in etcd: the next leader resumes them.
            stop_members.cancel();
            health.set_not_serving::<CoordinatorServer<CoordinatorService>>().await;
            if let Err(e) = lease.revoke(&etcd).await {
                tracing::warn!(error = %e, "could not step down; the standby takes over when the lease expires");
            }
            stop_server.cancel();
            server.await??;
            tracing::info!("coordinator stopped");
            Ok(())
        }
        _ = lost.cancelled() => bail!("leadership lost: the etcd lease expired"),
    }
}
