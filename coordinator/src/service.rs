//! The coordinator's client API (`medallion.v1.Coordinator`), served by every coordinator;
//! only the leader answers it, a standby points to the leader.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use etcd_client::Client;
use medallion_cluster::Keys;
use medallion_proto::coordinator_server::Coordinator as CoordinatorRpc;
use medallion_proto::{
    ExecutorStatus, GetRunRequest, ListExecutorsRequest, ListExecutorsResponse, ListRunsRequest,
    ListRunsResponse, RunInfo, SubmitRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::membership::Members;
use crate::runs::Runs;

/// Response metadata naming the leader's address in a standby's UNAVAILABLE answer.
pub const LEADER_HEADER: &str = "x-medallion-leader";

/// Whether this coordinator leads, and how a standby finds who does.
pub struct Role {
    leading: AtomicBool,
    etcd: Client,
    keys: Keys,
}

impl Role {
    pub fn new(etcd: Client, keys: Keys) -> Arc<Self> {
        Arc::new(Self {
            leading: AtomicBool::new(false),
            etcd,
            keys,
        })
    }

    pub fn set_leading(&self) {
        self.leading.store(true, Ordering::SeqCst);
    }

    /// Ok on the leader; on a standby, UNAVAILABLE with the leader's address.
    async fn lead(&self) -> Result<(), Status> {
        if self.leading.load(Ordering::SeqCst) {
            return Ok(());
        }
        let leader = self
            .etcd
            .clone()
            .leader(self.keys.leader())
            .await
            .ok()
            .and_then(|r| {
                r.kv()
                    .and_then(|kv| kv.value_str().ok().map(str::to_string))
            });
        let mut status = Status::unavailable(match &leader {
            Some(address) => format!("this coordinator is a standby; the leader is {address}"),
            None => "this coordinator is a standby and no leader is elected yet".to_string(),
        });
        if let Some(address) = leader.and_then(|a| a.parse().ok()) {
            status.metadata_mut().insert(LEADER_HEADER, address);
        }
        Err(status)
    }
}

pub struct CoordinatorService {
    pub role: Arc<Role>,
    pub runs: Arc<Runs>,
    pub members: Arc<Members>,
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn submit(&self, request: Request<SubmitRequest>) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        let spec = request
            .into_inner()
            .pipeline
            .ok_or_else(|| Status::invalid_argument("the request carries no pipeline spec"))?;
        Ok(Response::new(self.runs.submit(spec).await?))
    }

    async fn get_run(&self, request: Request<GetRunRequest>) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        Ok(Response::new(
            self.runs.get(&request.into_inner().run_id).await?,
        ))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        self.role.lead().await?;
        let runs = self.runs.list(request.into_inner().limit as usize).await?;
        Ok(Response::new(ListRunsResponse { runs }))
    }

    type WatchRunStream = ReceiverStream<Result<medallion_proto::RunEvent, Status>>;

    async fn watch_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        self.role.lead().await?;
        Ok(Response::new(
            self.runs.watch(&request.into_inner().run_id).await?,
        ))
    }

    async fn cancel_run(
        &self,
        request: Request<GetRunRequest>,
    ) -> Result<Response<RunInfo>, Status> {
        self.role.lead().await?;
        Ok(Response::new(
            self.runs.cancel(&request.into_inner().run_id).await?,
        ))
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
}
