//! The gRPC contract shared by the Medallion coordinator, executors and client.
//!
//! Generated from `proto/medallion.proto` with tonic-prost-build; see that file for what each
//! message means. [`convert`] turns domain types into messages and back.

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("medallion.v1");
}

pub use generated::*;

pub mod convert;

/// Puts a caller's bearer token on every call to the client API (the CLI's calls, and the
/// web UI's calls made for a viewer).
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    /// `None`: calls go without a token. A token a header cannot carry is refused.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let value = token
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
        Ok(Self(value))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl std::ops::AddAssign<&TaskMetrics> for TaskMetrics {
    fn add_assign(&mut self, o: &TaskMetrics) {
        self.rows_read += o.rows_read;
        self.rows_written += o.rows_written;
        self.rows_rescued += o.rows_rescued;
        self.rows_malformed += o.rows_malformed;
        self.rows_filtered += o.rows_filtered;
        self.rows_deduplicated += o.rows_deduplicated;
        self.files_read += o.files_read;
        self.bytes_written += o.bytes_written;
        self.write_ms += o.write_ms;
        self.run_ms += o.run_ms;
        self.bytes_read += o.bytes_read;
        self.rows_dropped += o.rows_dropped;
        self.rows_quarantined += o.rows_quarantined;
        for (check, n) in &o.check_failures {
            *self.check_failures.entry(check.clone()).or_default() += n;
        }
    }
}

impl RunState {
    /// The state as a word, for people and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Unspecified => "unknown",
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// How a task failed, which decides what the coordinator does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Bad input (a value that cannot be cast, a missing file): another attempt would fail
    /// the same way, so the task is not retried.
    Permanent,
    /// I/O and infrastructure errors: retried, each attempt counted.
    Transient,
    /// The executor went away (killed, shutting down) before the task ended: sent to another
    /// executor without counting as an attempt.
    Lost,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub message: String,
    pub kind: Failure,
}

impl Failure {
    /// The kind as a word, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Permanent => "permanent",
            Failure::Transient => "transient",
            Failure::Lost => "lost",
        }
    }
}

impl TaskError {
    /// An error that another attempt would repeat.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: Failure::Permanent,
        }
    }

    /// An error another attempt may not meet.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: Failure::Transient,
        }
    }

    /// The executor was lost under the task.
    pub fn lost(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind: Failure::Lost,
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind != Failure::Permanent
    }

    /// The task's error from an executor's answer: see the `Executor` service in the .proto.
    /// A call that broke off (the executor died) or an executor shutting down means the
    /// executor was lost, not that the task failed.
    pub fn from_status(status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::FailedPrecondition => Self::permanent(status.message()),
            tonic::Code::Aborted => Self::transient(status.message()),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                Self::lost(format!("executor lost: {}", status.message()))
            }
            code => Self::transient(format!("{code:?}: {}", status.message())),
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<TaskError> for tonic::Status {
    /// How an executor reports a failed task: see the `Executor` service in the .proto.
    fn from(e: TaskError) -> Self {
        match e.kind {
            Failure::Permanent => tonic::Status::failed_precondition(e.message),
            Failure::Transient => tonic::Status::aborted(e.message),
            Failure::Lost => tonic::Status::unavailable(e.message),
        }
    }
}

impl Task {
    /// A directory name for the `n`-th dispatch of the run's `start`-th start (a leader
    /// resuming a run starts it again): what it writes goes there, so what a failed or lost
    /// dispatch wrote can be deleted as a whole.
    ///
    /// `<run>-<task>-<n>`, or `<run>-<task>-<start>-<n>` after the first start: the run's id
    /// without the pipeline's name and the task's number within its table (the directory is
    /// in the table's own), so object keys stay short.
    pub fn dispatch_dir(&self, start: u32, n: u32) -> String {
        let pipeline = self.pipeline.as_ref().map_or("", |p| p.name.as_str());
        let run = self
            .run_id
            .strip_prefix(pipeline)
            .and_then(|r| r.strip_prefix('-'))
            .unwrap_or(&self.run_id);
        let task = self
            .task_id
            .rsplit_once('#')
            .map_or(&*self.task_id, |(_, n)| n);
        let (run, task) = (clean(run), clean(task));
        match start {
            0 | 1 => format!("{run}-{task}-{n}"),
            _ => format!("{run}-{task}-{start}-{n}"),
        }
    }
}

/// A name made safe for an object key: letters and digits, anything else a dash.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
