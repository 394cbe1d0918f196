//! What the web UI reads and does, behind one trait: a coordinator answers it through its
//! client API ([`super::cluster::ClusterConsole`]), `medallion ui <spec>` from the spec and the
//! lake ([`super::lake::LakeConsole`]), so both show the same pages.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use medallion_pipeline::Pipeline;
use medallion_proto::{ExecutorStatus, PipelineInfo, RunInfo};

use crate::auth::AccessRole;

/// Who is looking: the name and role their token gives (without tokens configured, anyone
/// is an admin, as on the client API).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub name: String,
    pub role: AccessRole,
    /// The bearer token, passed on to the client API with every call.
    pub token: Option<String>,
}

impl Viewer {
    /// Whether the viewer's role allows `action` (the client API decides again).
    pub fn may(&self, action: &Action) -> bool {
        AccessRole::needed_for(action.method()).is_some_and(|needed| self.role >= needed)
    }
}

/// What a viewer can ask for from the pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Trigger {
        pipeline: String,
    },
    Cancel {
        run_id: String,
    },
    Pause {
        pipeline: String,
    },
    Resume {
        pipeline: String,
    },
    /// Runs for each scheduled interval from `from` to `to` (dates, `YYYY-MM-DD`).
    Backfill {
        pipeline: String,
        from: String,
        to: String,
    },
}

impl Action {
    /// The client API method that does it, whose role it needs.
    pub fn method(&self) -> &'static str {
        match self {
            Action::Trigger { .. } => "Trigger",
            Action::Cancel { .. } => "CancelRun",
            Action::Pause { .. } | Action::Resume { .. } => "SetPaused",
            Action::Backfill { .. } => "Backfill",
        }
    }
}

/// Why a page cannot be shown; each maps to one HTTP status in [`UiError::status`].
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No token, or one nobody issued: the login page follows.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The cluster cannot answer now (no leader, etcd away).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

impl UiError {
    pub fn status(&self) -> StatusCode {
        match self {
            UiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The client API's refusals, as pages say them.
impl From<tonic::Status> for UiError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::Unauthenticated => UiError::Unauthenticated(message),
            tonic::Code::PermissionDenied => UiError::Forbidden(message),
            tonic::Code::NotFound => UiError::NotFound(message),
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                UiError::BadRequest(message)
            }
            tonic::Code::Unavailable => UiError::Unavailable(message),
            _ => UiError::Internal(anyhow::anyhow!("{message}")),
        }
    }
}

/// The data behind the pages. Every method gets the viewer, so that what it returns is what
/// the viewer may see (the pipelines granted to their token).
#[async_trait]
pub trait Console: Send + Sync + 'static {
    /// Who holds `token`; without one, who anyone is (or `Unauthenticated`).
    fn viewer(&self, token: Option<&str>) -> Result<Viewer, UiError>;

    /// Whether this console can act at all (the embedded one only reads the lake).
    fn acts(&self) -> bool;

    async fn pipelines(&self, viewer: &Viewer) -> Result<Vec<PipelineInfo>, UiError>;

    /// The pipeline's spec, as deployed (or as given to `medallion ui`).
    async fn pipeline(&self, viewer: &Viewer, name: &str) -> Result<Arc<Pipeline>, UiError>;

    /// The latest runs, newest first.
    async fn runs(&self, viewer: &Viewer, limit: usize) -> Result<Vec<RunInfo>, UiError>;

    /// One run; while it runs, with the tables finished so far.
    async fn run(&self, viewer: &Viewer, run_id: &str) -> Result<RunInfo, UiError>;

    /// The executors; `None` where tasks run in this process.
    async fn executors(&self, viewer: &Viewer) -> Result<Option<Vec<ExecutorStatus>>, UiError>;

    /// Does `action`; says what was done (`run r-… queued`).
    async fn act(&self, viewer: &Viewer, action: Action) -> Result<String, UiError>;
}
