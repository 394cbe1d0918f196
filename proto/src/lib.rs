//! The gRPC contract shared by the Medallion coordinator, executors and client.
//!
//! Generated from `proto/medallion.proto` with tonic-prost-build; see that file for what each
//! message means.

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("medallion.v1");
}

pub use generated::*;

impl std::ops::AddAssign<&TaskMetrics> for TaskMetrics {
    fn add_assign(&mut self, o: &TaskMetrics) {
        self.rows_read += o.rows_read;
        self.rows_written += o.rows_written;
        self.rows_rescued += o.rows_rescued;
        self.rows_filtered += o.rows_filtered;
        self.rows_deduplicated += o.rows_deduplicated;
        self.files_read += o.files_read;
        self.bytes_written += o.bytes_written;
    }
}

/// Why a task failed, and whether running it again could help.
///
/// Bad input (a value that cannot be cast, a missing file) fails the same way every time, so
/// the coordinator does not retry it; I/O and infrastructure errors are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub message: String,
    pub retryable: bool,
}

impl TaskError {
    /// An error that another attempt would repeat.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// An error another attempt may not meet.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}
