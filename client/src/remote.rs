//! The client side of a cluster: submit or deploy a pipeline to the leader coordinator,
//! follow and manage its runs and schedules, list the executors, query its tables (Flight
//! SQL).

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use medallion_cluster::{ClientTls, TlsArgs};
use medallion_coordinator::RunObserver;
use medallion_coordinator::flight::{PIPELINE_HEADER, SNAPSHOT_HEADER};
use medallion_coordinator::service::LEADER_HEADER;
use medallion_pipeline::Pipeline;
use medallion_pipeline::plan::RunPlan;
use medallion_proto::convert::Watched;
use medallion_proto::coordinator_client::CoordinatorClient;
use medallion_proto::{
    BackfillRequest, BearerToken, DeployRequest, ExecutorStatus, GetRunRequest,
    ListExecutorsRequest, ListPipelinesRequest, ListRunsRequest, PipelineInfo, PipelineRequest,
    RerunRequest, RunInfo, RunState, SetPausedRequest, SubmitRequest, TriggerRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where the cluster is, and the token that says who calls it.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Coordinator URLs, comma-separated (cluster commands); a standby points to the leader.
    #[arg(
        long,
        global = true,
        env = "MEDALLION_COORDINATOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: Vec<String>,
    /// A file holding the bearer token for a coordinator that requires one (a mounted
    /// Secret); the token itself may instead be in MEDALLION_TOKEN.
    #[arg(long, global = true, env = "MEDALLION_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// The CA that signs `https://` coordinators' certificates, and the client certificate
    /// to present to one that requires it.
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ClusterArgs {
    /// The bearer token to send, if one is given.
    fn token(&self) -> Result<Option<String>> {
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?,
            ),
            None => std::env::var("MEDALLION_TOKEN").ok(),
        };
        Ok(token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }
}

/// Who calls: the token sent and the TLS used.
struct Caller {
    token: BearerToken,
    tls: ClientTls,
}

/// A connection to the leader coordinator.
pub struct Remote {
    client: CoordinatorClient<InterceptedService<Channel, BearerToken>>,
}

/// An error the coordinator answered with, shown as its message and gRPC code.
#[derive(Debug)]
pub struct ServerError(pub tonic::Status);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.0.message(), self.0.code())
    }
}

impl std::error::Error for ServerError {}

impl ServerError {
    /// The request was wrong (bad spec, unknown run, run already ended, no or a wrong token,
    /// beyond the token's role), not the cluster: trying again changes nothing.
    pub fn is_bad_request(&self) -> bool {
        use tonic::Code;
        matches!(
            self.0.code(),
            Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::Unauthenticated
                | Code::PermissionDenied
        )
    }
}

fn server_error(status: tonic::Status) -> anyhow::Error {
    ServerError(status).into()
}

/// Runs `query` on the Flight SQL endpoint of the first coordinator that answers (any
/// coordinator serves it), over the deployed pipeline `pipeline` (the only one deployed when
/// `None`), at run `snapshot`'s versions when given; its rows as they stream in.
pub async fn query(
    cluster: &ClusterArgs,
    query: &str,
    pipeline: Option<&str>,
    snapshot: Option<&str>,
) -> Result<SendableRecordBatchStream> {
    let tls = cluster.tls.client()?;
    let mut last = anyhow!("no coordinator address given");
    for url in &cluster.coordinator {
        let channel = match tls.target(url) {
            Ok(target) => target.connect().await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => {
                last = e.context(format!("cannot reach the coordinator at {url}"));
                continue;
            }
        };
        let mut client = FlightSqlServiceClient::new(channel);
        if let Some(token) = cluster.token()? {
            client.set_header("authorization", format!("Bearer {token}"));
        }
        for (header, value) in [(PIPELINE_HEADER, pipeline), (SNAPSHOT_HEADER, snapshot)] {
            if let Some(value) = value {
                client.set_header(header, value);
            }
        }
        let info = client
            .execute(query.to_string(), None)
            .await
            .map_err(flight_error)?;
        let schema = Arc::new(info.clone().try_decode_schema()?);
        let mut streams = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
            streams.push(client.do_get(ticket).await.map_err(flight_error)?);
        }
        let rows = futures::stream::iter(streams)
            .flatten()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)));
        return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)));
    }
    Err(last)
}

/// A Flight error as the coordinator's answer when it is one.
fn flight_error(e: arrow_flight::error::FlightError) -> anyhow::Error {
    match e {
        arrow_flight::error::FlightError::Tonic(status) => server_error(*status),
        e => e.into(),
    }
}

impl Remote {
    /// Connects to the first coordinator that answers, following a standby to the leader.
    pub async fn connect(cluster: &ClusterArgs) -> Result<Self> {
        let caller = Caller {
            token: BearerToken::new(cluster.token()?.as_deref()).map_err(|e| anyhow!(e))?,
            tls: cluster.tls.client()?,
        };
        let mut last = anyhow!("no coordinator address given");
        for url in &cluster.coordinator {
            match Self::leader_at(&caller, url).await {
                Ok(remote) => return Ok(remote),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn leader_at(caller: &Caller, url: &str) -> Result<Self> {
        let mut remote = Self::at(caller, url).await?;
        match remote.client.list_executors(ListExecutorsRequest {}).await {
            Ok(_) => Ok(remote),
            Err(status) => {
                let leader = status
                    .metadata()
                    .get(LEADER_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .filter(|l| *l != url);
                match leader {
                    Some(leader) => Self::at(caller, leader).await,
                    None => Err(server_error(status)).with_context(|| format!("coordinator {url}")),
                }
            }
        }
    }

    async fn at(caller: &Caller, url: &str) -> Result<Self> {
        let mut target = caller
            .tls
            .target(url)
            .with_context(|| format!("coordinator {url}"))?;
        target.endpoint = target
            .endpoint
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = target
            .connect()
            .await
            .with_context(|| format!("cannot reach the coordinator at {url}"))?;
        Ok(Self {
            client: CoordinatorClient::with_interceptor(channel, caller.token.clone()),
        })
    }

    /// Submits a spec already loaded (and so validated) as `pipeline`; `full_refresh`: see
    /// `medallion run --full-refresh`.
    pub async fn submit(&mut self, pipeline: &Pipeline, full_refresh: bool) -> Result<RunInfo> {
        let request = SubmitRequest {
            pipeline: Some(pipeline.into()),
            full_refresh,
        };
        let info = self.client.submit(request).await.map_err(server_error)?;
        Ok(info.into_inner())
    }

    /// What a run of `pipeline` would do, as the coordinators see its sources and lake.
    pub async fn plan(&mut self, pipeline: &Pipeline, full_refresh: bool) -> Result<RunPlan> {
        let request = SubmitRequest {
            pipeline: Some(pipeline.into()),
            full_refresh,
        };
        let response = self.client.plan(request).await.map_err(server_error)?;
        response.into_inner().plan().map_err(anyhow::Error::msg)
    }

    pub async fn run(&mut self, run_id: &str) -> Result<RunInfo> {
        let request = GetRunRequest {
            run_id: run_id.to_string(),
        };
        Ok(self
            .client
            .get_run(request)
            .await
            .map_err(server_error)?
            .into_inner())
    }

    pub async fn runs(&mut self, limit: u32) -> Result<Vec<RunInfo>> {
        let runs = self.client.list_runs(ListRunsRequest { limit }).await;
        Ok(runs.map_err(server_error)?.into_inner().runs)
    }

    pub async fn cancel(&mut self, run_id: &str) -> Result<RunInfo> {
        let request = GetRunRequest {
            run_id: run_id.to_string(),
        };
        Ok(self
            .client
            .cancel_run(request)
            .await
            .map_err(server_error)?
            .into_inner())
    }

    pub async fn executors(&mut self) -> Result<Vec<ExecutorStatus>> {
        let executors = self.client.list_executors(ListExecutorsRequest {}).await;
        Ok(executors.map_err(server_error)?.into_inner().executors)
    }

    /// Runs an ended run again: keeping what it committed (`from_failed`), rebuilding
    /// `full_refresh` tables and what reads them.
    pub async fn rerun(
        &mut self,
        run_id: &str,
        from_failed: bool,
        full_refresh: &[String],
    ) -> Result<RunInfo> {
        let request = RerunRequest {
            run_id: run_id.to_string(),
            from_failed,
            full_refresh: full_refresh.to_vec(),
        };
        let info = self.client.rerun(request).await.map_err(server_error)?;
        Ok(info.into_inner())
    }

    /// Registers `pipeline` (loaded, so validated) or updates its spec.
    pub async fn deploy(&mut self, pipeline: &Pipeline) -> Result<PipelineInfo> {
        let request = DeployRequest {
            pipeline: Some(pipeline.into()),
        };
        let info = self.client.deploy(request).await.map_err(server_error)?;
        Ok(info.into_inner())
    }

    pub async fn pipelines(&mut self) -> Result<Vec<PipelineInfo>> {
        let list = self.client.list_pipelines(ListPipelinesRequest {}).await;
        Ok(list.map_err(server_error)?.into_inner().pipelines)
    }

    pub async fn set_paused(&mut self, name: &str, paused: bool) -> Result<PipelineInfo> {
        let request = SetPausedRequest {
            name: name.to_string(),
            paused,
        };
        let info = self
            .client
            .set_paused(request)
            .await
            .map_err(server_error)?;
        Ok(info.into_inner())
    }

    pub async fn undeploy(&mut self, name: &str) -> Result<PipelineInfo> {
        let request = PipelineRequest {
            name: name.to_string(),
        };
        let info = self.client.undeploy(request).await.map_err(server_error)?;
        Ok(info.into_inner())
    }

    /// A run of a deployed pipeline now; `date`: its logical date (`YYYY-MM-DD`).
    pub async fn trigger(&mut self, name: &str, date: Option<&str>) -> Result<RunInfo> {
        let request = TriggerRequest {
            name: name.to_string(),
            date: date.unwrap_or_default().to_string(),
        };
        let info = self.client.trigger(request).await.map_err(server_error)?;
        Ok(info.into_inner())
    }

    /// One run per interval of the logical dates `from` to `to` (`YYYY-MM-DD`).
    pub async fn backfill(&mut self, name: &str, from: &str, to: &str) -> Result<PipelineInfo> {
        let request = BackfillRequest {
            name: name.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        };
        let info = self.client.backfill(request).await.map_err(server_error)?;
        Ok(info.into_inner())
    }

    /// Follows a run to its end, telling `observer` what happens; returns the run as it ended.
    pub async fn watch(&mut self, run_id: &str, observer: &dyn RunObserver) -> Result<RunInfo> {
        let request = GetRunRequest {
            run_id: run_id.to_string(),
        };
        let mut events = self
            .client
            .watch_run(request)
            .await
            .map_err(server_error)?
            .into_inner();
        while let Some(event) = events.message().await.map_err(server_error)? {
            match Watched::try_from(event).map_err(|e| anyhow!(e))? {
                Watched::Progress(event) => observer.on_event(event),
                Watched::Ended(info) => return Ok(info),
            }
        }
        bail!("the coordinator stopped before run {run_id} ended; watch it again")
    }
}

/// The run's state as a word.
pub fn state_name(info: &RunInfo) -> &'static str {
    RunState::try_from(info.state)
        .unwrap_or(RunState::Unspecified)
        .name()
}
