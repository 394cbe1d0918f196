//! The UI of a coordinator: every read and action is a call to the client API, made in this
//! process with the viewer's token, through the same gates as a call from the network. So the
//! API decides who may do what (roles, pipeline grants, the audit log) in one place, and on a
//! standby the calls go on to the leader as the API's do.

use std::sync::Arc;

use async_trait::async_trait;
use medallion_pipeline::Pipeline;
use medallion_proto::coordinator_client::CoordinatorClient;
use medallion_proto::{
    BackfillRequest, BearerToken, ExecutorStatus, GetRunRequest, ListExecutorsRequest,
    ListPipelinesRequest, ListRunsRequest, PipelineInfo, RunInfo, RunState, SetPausedRequest,
    TriggerRequest,
};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

use super::console::{Action, Console, UiError, Viewer};
use crate::auth::{AccessRole, Identities};
use crate::scheduler::Scheduler;

/// A console over the client API as this coordinator serves it.
pub struct ClusterConsole {
    /// The client API with its gates (authentication, forwarding to the leader).
    api: Routes,
    /// Deployed specs, for the graph and table pages: etcd holds them, so any coordinator
    /// reads them.
    scheduler: Arc<Scheduler>,
    /// `None`: the API is open, and so is the UI.
    identities: Option<Arc<Identities>>,
}

type Client = CoordinatorClient<InterceptedService<Routes, BearerToken>>;

impl ClusterConsole {
    pub fn new(
        api: Routes,
        scheduler: Arc<Scheduler>,
        identities: Option<Arc<Identities>>,
    ) -> Self {
        Self {
            api,
            scheduler,
            identities,
        }
    }

    /// A client of the API that calls as `viewer`.
    fn client(&self, viewer: &Viewer) -> Result<Client, UiError> {
        let bearer = BearerToken::new(viewer.token.as_deref()).map_err(UiError::Unauthenticated)?;
        Ok(CoordinatorClient::with_interceptor(
            self.api.clone(),
            bearer,
        ))
    }
}

#[async_trait]
impl Console for ClusterConsole {
    fn viewer(&self, token: Option<&str>) -> Result<Viewer, UiError> {
        let Some(identities) = &self.identities else {
            return Ok(Viewer {
                name: "anyone".into(),
                role: AccessRole::Admin,
                token: None,
            });
        };
        let token = token.ok_or_else(|| UiError::Unauthenticated("sign in with a token".into()))?;
        let caller = identities.caller(token).map_err(UiError::Unauthenticated)?;
        Ok(Viewer {
            name: caller.name,
            role: caller.role,
            token: Some(token.to_string()),
        })
    }

    fn acts(&self) -> bool {
        true
    }

    async fn pipelines(&self, viewer: &Viewer) -> Result<Vec<PipelineInfo>, UiError> {
        let mut client = self.client(viewer)?;
        let response = client.list_pipelines(ListPipelinesRequest {}).await?;
        Ok(response.into_inner().pipelines)
    }

    async fn pipeline(&self, viewer: &Viewer, name: &str) -> Result<Arc<Pipeline>, UiError> {
        // The grant the API checks (`auth::check_grant`), without listing every pipeline's
        // runs and tables as ListPipelines would: a running run's page asks every second.
        if let (Some(identities), Some(token)) = (&self.identities, &viewer.token) {
            let caller = identities.caller(token).map_err(UiError::Unauthenticated)?;
            if !caller.granted(name) {
                return Err(UiError::NotFound(format!("no pipeline '{name}' deployed")));
            }
        }
        self.scheduler
            .deployed(Some(name))
            .await
            .map_err(|e| UiError::from(tonic::Status::from(e)))
    }

    async fn runs(&self, viewer: &Viewer, limit: usize) -> Result<Vec<RunInfo>, UiError> {
        let mut client = self.client(viewer)?;
        let limit = limit as u32;
        let response = client.list_runs(ListRunsRequest { limit }).await?;
        Ok(response.into_inner().runs)
    }

    async fn run(&self, viewer: &Viewer, run_id: &str) -> Result<RunInfo, UiError> {
        let mut client = self.client(viewer)?;
        let run_id = run_id.to_string();
        Ok(client.get_run(GetRunRequest { run_id }).await?.into_inner())
    }

    async fn executors(&self, viewer: &Viewer) -> Result<Option<Vec<ExecutorStatus>>, UiError> {
        let mut client = self.client(viewer)?;
        let response = client.list_executors(ListExecutorsRequest {}).await?;
        Ok(Some(response.into_inner().executors))
    }

    async fn act(&self, viewer: &Viewer, action: Action) -> Result<String, UiError> {
        let mut client = self.client(viewer)?;
        Ok(match action {
            Action::Trigger { pipeline } => {
                let request = TriggerRequest {
                    name: pipeline,
                    date: String::new(),
                };
                let run = client.trigger(request).await?.into_inner();
                format!("run {} queued", run.run_id)
            }
            Action::Cancel { run_id } => {
                let run = client.cancel_run(GetRunRequest { run_id }).await?;
                let run = run.into_inner();
                // A run whose tables were all done when the cancel came ends as it was.
                match run.state() {
                    RunState::Cancelled => format!("run {} cancelled", run.run_id),
                    state => format!(
                        "run {} had already ended ({}) when the cancel came",
                        run.run_id,
                        state
                            .as_str_name()
                            .trim_start_matches("RUN_STATE_")
                            .to_lowercase()
                    ),
                }
            }
            Action::Pause { pipeline } => paused(&mut client, pipeline, true).await?,
            Action::Resume { pipeline } => paused(&mut client, pipeline, false).await?,
            Action::Backfill { pipeline, from, to } => {
                let request = BackfillRequest {
                    name: pipeline,
                    from,
                    to,
                };
                let info = client.backfill(request).await?.into_inner();
                format!(
                    "backfill of {}: {} runs to go",
                    info.name, info.backfill_pending
                )
            }
        })
    }
}

async fn paused(client: &mut Client, name: String, paused: bool) -> Result<String, UiError> {
    let request = SetPausedRequest { name, paused };
    let info = client.set_paused(request).await?.into_inner();
    let word = if info.paused { "paused" } else { "resumed" };
    Ok(format!("{} {word}", info.name))
}
