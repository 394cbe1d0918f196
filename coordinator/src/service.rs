//! The coordinator's client API (`medallion.v1.Coordinator`), served by every coordinator;
//! only the leader answers it. A standby forwards each call to the leader ([`ForwardToLeader`], a
//! [`Gate`]),
//! so a client (or a Kubernetes Service) may reach any coordinator; when the leader cannot be
//! reached, a standby answers UNAVAILABLE with the leader's address.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use etcd_client::Client;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use medallion_cluster::{ClientTls, Keys};
use medallion_pipeline::{Pipeline, RunDate};
use medallion_proto::coordinator_server::Coordinator as CoordinatorRpc;
use medallion_proto::{
    BackfillRequest, DeployRequest, ExecutorStatus, GetRunRequest, ListExecutorsRequest,
    ListExecutorsResponse, ListPipelinesRequest, ListPipelinesResponse, ListRunsRequest,
    ListRunsResponse, PipelineInfo, PipelineRequest, PlanResponse, RerunRequest, RunInfo,
    SetPausedRequest, SubmitRequest, TriggerRequest,
};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tower::{Service, ServiceExt};

use crate::auth::{Caller, check_grant};
use crate::membership::Members;
use crate::runs::{Origin, Runs, RunsError};
use crate::scheduler::Scheduler;

/// Response metadata naming the leader's address in a standby's UNAVAILABLE answer.
pub const LEADER_HEADER: &str = "x-medallion-leader";

/// Request metadata marking a call a standby forwarded: it is never forwarded again, so two
/// coordinators with stale views of the leader cannot pass a call back and forth.
const FORWARDED_HEADER: &str = "x-medallion-forwarded";

/// Whether this coordinator leads, and how a standby finds who does.
pub struct Role {
    leading: AtomicBool,
    etcd: Client,
    keys: Keys,
    /// This coordinator's own address, never a forwarding target.
    advertise: String,
    /// How to reach the leader (TLS for an `https://` address).
    tls: ClientTls,
    /// The channel to the last leader forwarded to, reused while it leads.
    leader_channel: tokio::sync::Mutex<Option<(String, Channel)>>,
}

impl Role {
    pub fn new(etcd: Client, keys: Keys, advertise: String, tls: ClientTls) -> Arc<Self> {
        Arc::new(Self {
            leading: AtomicBool::new(false),
            etcd,
            keys,
            advertise,
            tls,
            leader_channel: Default::default(),
        })
    }

    pub fn set_leading(&self) {
        self.leading.store(true, Ordering::SeqCst);
    }

    fn leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// The elected leader's address, as it advertises itself.
    async fn leader(&self) -> Option<String> {
        self.etcd
            .clone()
            .leader(self.keys.leader())
            .await
            .ok()
            .and_then(|r| {
                r.kv()
                    .and_then(|kv| kv.value_str().ok().map(str::to_string))
            })
    }

    /// A channel to the leader, when there is one other than this coordinator.
    async fn channel_to_leader(&self) -> Option<(String, Channel)> {
        let leader = self.leader().await.filter(|l| *l != self.advertise)?;
        let mut cached = self.leader_channel.lock().await;
        match &*cached {
            Some((address, channel)) if *address == leader => {
                Some((address.clone(), channel.clone()))
            }
            _ => {
                let channel = self.tls.target(&leader).ok()?.connect_lazy();
                *cached = Some((leader.clone(), channel.clone()));
                Some((leader, channel))
            }
        }
    }

    /// Ok on the leader; on a standby, UNAVAILABLE with the leader's address.
    async fn lead(&self) -> Result<(), Status> {
        if self.leading() {
            return Ok(());
        }
        let leader = self.leader().await;
        let message = match &leader {
            Some(address) => format!("this coordinator is a standby; the leader is {address}"),
            None => "this coordinator is a standby and no leader is elected yet".to_string(),
        };
        Err(standby_unavailable(message, leader.as_deref()))
    }
}

/// A standby's UNAVAILABLE answer, naming the leader (when known) for the client to follow.
fn standby_unavailable(message: String, leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(message);
    if let Some(address) = leader.and_then(|a| a.parse().ok()) {
        status.metadata_mut().insert(LEADER_HEADER, address);
    }
    status
}

/// The HTTP service of a gRPC API, as tonic serves it.
pub trait GrpcService:
    Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The service's answer to `request` (it has no errors of its own: they are responses).
    fn answer(mut self, request: http::Request<Body>) -> BoxFuture<'static, http::Response<Body>> {
        let answered = self.call(request);
        Box::pin(async move {
            match answered.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }
}

impl<S> GrpcService for S where
    S: Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Something that sees each call of a gRPC service before the service does, and answers it
/// itself or passes it on (see [`Gated`]).
pub trait Gate: Clone + Send + 'static {
    fn call<S>(
        &self,
        request: http::Request<Body>,
        service: S,
    ) -> BoxFuture<'static, http::Response<Body>>
    where
        S: GrpcService;
}

/// A gRPC service behind a [`Gate`].
#[derive(Clone)]
pub struct Gated<S, G> {
    inner: S,
    gate: G,
}

impl<S, G> Gated<S, G> {
    pub fn new(inner: S, gate: G) -> Self {
        Self { inner, gate }
    }
}

impl<S: NamedService, G> NamedService for Gated<S, G> {
    const NAME: &'static str = S::NAME;
}

impl<S, G> Service<http::Request<Body>> for Gated<S, G>
where
    S: GrpcService,
    G: Gate,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone serves the next call; this one, ready, serves this call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let answer = self.gate.call(request, ready);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// The client API's gate on every coordinator: the leader answers calls itself, a standby
/// forwards them to the leader unchanged (streams included) and relays the answer.
#[derive(Clone)]
pub struct ForwardToLeader(pub Arc<Role>);

impl Gate for ForwardToLeader {
    fn call<S>(
        &self,
        mut request: http::Request<Body>,
        service: S,
    ) -> BoxFuture<'static, http::Response<Body>>
    where
        S: GrpcService,
    {
        let role = self.0.clone();
        Box::pin(async move {
            let forwardable = !role.leading() && !request.headers().contains_key(FORWARDED_HEADER);
            let leader = if forwardable {
                role.channel_to_leader().await
            } else {
                None
            };
            // The leader, a call forwarded once already, or no leader elected: the service
            // answers (on a standby, UNAVAILABLE naming the leader).
            let Some((address, mut channel)) = leader else {
                return service.answer(request).await;
            };
            request
                .headers_mut()
                .insert(FORWARDED_HEADER, http::HeaderValue::from_static("1"));
            let forwarded = match channel.ready().await {
                Ok(ready) => ready.call(request).await,
                Err(e) => Err(e),
            };
            crate::metrics::call_forwarded(forwarded.is_ok());
            match forwarded {
                Ok(response) => response,
                Err(e) => standby_unavailable(
                    format!(
                        "this coordinator is a standby and cannot reach the leader {address}: {e}"
                    ),
                    Some(&address),
                )
                .into_http(),
            }
        })
    }
}

/// The one place run errors become gRPC codes (see the `Coordinator` service in the .proto).
impl From<RunsError> for Status {
    fn from(e: RunsError) -> Self {
        let message = e.to_string();
        match e {
            RunsError::InvalidSpec(_) => Status::invalid_argument(message),
            RunsError::NotFound(_) | RunsError::NotDeployed(_) => Status::not_found(message),
            RunsError::BadRequest(_) => Status::invalid_argument(message),
            RunsError::Ended { .. } => Status::failed_precondition(message),
            RunsError::Store(_) | RunsError::NotTakenOver(_) => Status::unavailable(message),
        }
    }
}

pub struct CoordinatorService {
    pub role: Arc<Role>,
    pub runs: Arc<Runs>,
    pub scheduler: Arc<Scheduler>,
    pub members: Arc<Members>,
}

/// Who calls, when the API requires tokens ([`crate::auth::Authenticate`] put it there).
fn caller<T>(request: &Request<T>) -> Option<Caller> {
    request.extensions().get::<Caller>().cloned()
}

impl CoordinatorService {
    /// The spec of a submit or plan request, admitted (validated, confined) on the leader for
    /// a caller granted its pipeline; and whether it asks for a full refresh.
    async fn admitted(
        &self,
        request: Request<SubmitRequest>,
        method: &str,
    ) -> Result<(Pipeline, bool), Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let request = request.into_inner();
        let spec = request
            .pipeline
            .ok_or_else(|| Status::invalid_argument("the request carries no pipeline spec"))?;
        let pipeline = self.runs.admit(&spec, spec.run_date())?;
        check_grant(caller.as_ref(), method, pipeline.name())?;
        Ok((pipeline, request.full_refresh))
    }

    /// The run a request names, if the caller is granted its pipeline.
    async fn granted_run(
        &self,
        request: &Request<GetRunRequest>,
        method: &str,
    ) -> Result<RunInfo, Status> {
        let info = self.runs.get(&request.get_ref().run_id).await?;
        check_grant(caller(request).as_ref(), method, &info.pipeline)?;
        Ok(info)
    }
}

/// A logical date of a request, `YYYY-MM-DD`.
fn date(field: &str, text: &str) -> Result<chrono::NaiveDate, Status> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| {
        Status::invalid_argument(format!("{field}: '{text}' is not a date (YYYY-MM-DD): {e}"))
    })
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<RunInfo>, Status> {
        let (pipeline, full_refresh) = self.admitted(request, "Submit").await?;
        let info = self
            .runs
            .submit_pipeline(pipeline, full_refresh, Origin::manual());
        Ok(Response::new(info.await?))
    }

    async fn plan(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<PlanResponse>, Status> {
        let (pipeline, full_refresh) = self.admitted(request, "Plan").await?;
        let plan = crate::plan::plan(&pipeline, full_refresh)
            .await
            .map_err(|e| RunsError::BadRequest(format!("{e:#}")))?;
        Ok(Response::new(PlanResponse::new(&plan)))
    }

    async fn get_run(&self, request: Request<GetRunRequest>) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        let info = self.granted_run(&request, "GetRun").await?;
        Ok(Response::new(info))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let mut runs = self.runs.list(request.into_inner().limit as usize).await?;
        runs.retain(|r| caller.as_ref().is_none_or(|c| c.granted(&r.pipeline)));
        Ok(Response::new(ListRunsResponse { runs }))
    }

    type WatchRunStream = BoxStream<'static, Result<medallion_proto::RunEvent, Status>>;

    async fn watch_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        self.role.lead().await?;
        let info = self.granted_run(&request, "WatchRun").await?;
        let events = self.runs.watch(&info.run_id).await?;
        Ok(Response::new(events.map(Ok).boxed()))
    }

    async fn cancel_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        let info = self.granted_run(&request, "CancelRun").await?;
        Ok(Response::new(self.runs.cancel(&info.run_id).await?))
    }

    async fn list_executors(
        &self,
        _request: Request<ListExecutorsRequest>,
    ) -> Result<Response<ListExecutorsResponse>, Status> {
        self.role.lead().await?;
        let executors = self
            .members
            .list()
            .into_iter()
            .map(|m| ExecutorStatus {
                info: Some(m.info.clone()),
                running: m.running(),
            })
            .collect();
        Ok(Response::new(ListExecutorsResponse { executors }))
    }

    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let spec = request
            .into_inner()
            .pipeline
            .ok_or_else(|| Status::invalid_argument("the request carries no pipeline spec"))?;
        let name = self.runs.admit(&spec, RunDate::Latest)?.name().to_string();
        check_grant(caller.as_ref(), "Deploy", &name)?;
        Ok(Response::new(self.scheduler.deploy(spec).await?))
    }

    async fn list_pipelines(
        &self,
        request: Request<ListPipelinesRequest>,
    ) -> Result<Response<ListPipelinesResponse>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let mut pipelines = self.scheduler.pipelines().await?;
        pipelines.retain(|p| caller.as_ref().is_none_or(|c| c.granted(&p.name)));
        Ok(Response::new(ListPipelinesResponse { pipelines }))
    }

    async fn set_paused(
        &self,
        request: Request<SetPausedRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let request = request.into_inner();
        check_grant(caller.as_ref(), "SetPaused", &request.name)?;
        let info = self.scheduler.set_paused(&request.name, request.paused);
        Ok(Response::new(info.await?))
    }

    async fn undeploy(
        &self,
        request: Request<PipelineRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let name = request.into_inner().name;
        check_grant(caller.as_ref(), "Undeploy", &name)?;
        Ok(Response::new(self.scheduler.undeploy(&name).await?))
    }

    async fn trigger(&self, request: Request<TriggerRequest>) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let request = request.into_inner();
        check_grant(caller.as_ref(), "Trigger", &request.name)?;
        let day = match request.date.as_str() {
            "" => None,
            text => Some(date("date", text)?),
        };
        let info = self.scheduler.trigger(&request.name, day).await?;
        Ok(Response::new(info))
    }

    async fn backfill(
        &self,
        request: Request<BackfillRequest>,
    ) -> Result<Response<PipelineInfo>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let request = request.into_inner();
        check_grant(caller.as_ref(), "Backfill", &request.name)?;
        let (from, to) = (date("from", &request.from)?, date("to", &request.to)?);
        let info = self.scheduler.backfill(&request.name, from, to).await?;
        Ok(Response::new(info))
    }

    async fn rerun(&self, request: Request<RerunRequest>) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        let caller = caller(&request);
        let r = request.into_inner();
        let info = self.runs.get(&r.run_id).await?;
        check_grant(caller.as_ref(), "Rerun", &info.pipeline)?;
        let info = self.runs.rerun(&r.run_id, r.from_failed, &r.full_refresh);
        Ok(Response::new(info.await?))
    }
}
