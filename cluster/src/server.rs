//! What every Medallion server does the same way: its gRPC and metrics addresses, the URL
//! others reach it at, its etcd lease TTL, and serving its gRPC services beside the standard
//! health service until told to stop.
//!
//! The two servers differ only in their default ports, so those are type parameters:
//! `ServerArgs<7070, 9470>` for the coordinator, `ServerArgs<7071, 9471>` for an executor.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::server::HealthReporter;

use crate::tls::TlsArgs;

#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs<const GRPC_PORT: u16, const METRICS_PORT: u16> {
    /// Address to serve gRPC (the server's API and health) on.
    #[arg(long, env = "MEDALLION_LISTEN", default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, GRPC_PORT)))]
    pub listen: SocketAddr,
    /// URL others call this server at [default: http://127.0.0.1:<listen port>]; in
    /// Kubernetes, the pod's IP or the Service's name.
    #[arg(long, env = "MEDALLION_ADVERTISE")]
    pub advertise: Option<String>,
    /// Seconds etcd keeps this server's lease (leadership or registration) without hearing
    /// from it; others take over at most this long after it dies.
    #[arg(long, env = "MEDALLION_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: i64,
    /// Address to serve Prometheus metrics on, at `/metrics`.
    #[arg(long, env = "MEDALLION_METRICS_LISTEN", default_value_t = SocketAddr::from((Ipv4Addr::UNSPECIFIED, METRICS_PORT)))]
    pub metrics_listen: SocketAddr,
    /// A file holding the bearer token scrapers must send to `/metrics` (Prometheus:
    /// `authorization.credentials_file`), read at each scrape; without it, metrics are open.
    #[arg(long, env = "MEDALLION_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Mutual TLS: refuse callers without a certificate `--tls-ca` signed.
    #[arg(long, env = "MEDALLION_TLS_CLIENT_AUTH")]
    pub tls_client_auth: bool,
}

impl<const G: u16, const M: u16> ServerArgs<G, M> {
    /// Binds the gRPC port (so a taken port fails at start-up, before etcd is touched).
    /// Certificates are read here too, so a bad one fails at start-up.
    pub async fn bind(&self) -> anyhow::Result<Bound> {
        let tls = self.tls.server(self.tls_client_auth)?;
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let port = listener.local_addr()?.port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let advertise =
            (self.advertise.clone()).unwrap_or_else(|| format!("{scheme}://127.0.0.1:{port}"));
        Ok(Bound {
            listener,
            tls,
            advertise,
            metrics_listen: self.metrics_listen,
            metrics_token_file: self.metrics_token_file.clone(),
        })
    }
}

/// A bound gRPC port, not serving yet.
pub struct Bound {
    listener: tokio::net::TcpListener,
    tls: Option<TlsAcceptor>,
    /// The URL others reach this server at.
    pub advertise: String,
    metrics_listen: SocketAddr,
    metrics_token_file: Option<PathBuf>,
}

/// A server that serves until [`Serving::stop`].
pub struct Serving {
    /// The standard health service's statuses; each service starts unknown (NOT_FOUND), so a
    /// readiness probe fails until the server says it serves.
    pub health: HealthReporter,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Bound {
    /// Serves `routes` and the health service on the bound port, and metrics on theirs.
    pub async fn serve(self, routes: Routes) -> anyhow::Result<Serving> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let stop = CancellationToken::new();
        let token_file = self.metrics_token_file;
        crate::metrics::serve(self.metrics_listen, token_file, stop.clone()).await?;
        let router =
            tonic::transport::Server::builder().add_routes(routes.add_service(health_service));
        let stopped = stop.clone().cancelled_owned();
        let server = match self.tls {
            Some(acceptor) => tokio::spawn(router.serve_with_incoming_shutdown(
                crate::tls::incoming(self.listener, acceptor),
                stopped,
            )),
            None => tokio::spawn(router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(self.listener),
                stopped,
            )),
        };
        Ok(Serving {
            health,
            stop,
            server,
        })
    }
}

impl Serving {
    /// Stops taking calls, lets the calls in flight finish, and waits for the server to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await??;
        Ok(())
    }

    /// Cancelled when the server stops: for tasks that should stop with it.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }
}
