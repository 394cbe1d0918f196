//! Logs on stderr: readable lines on a terminal, JSON lines for machines (log collectors,
//! `kubectl logs`). Every line of work carries its spans' fields: run id and pipeline, stage
//! and table, task id and attempt.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// The logging flags of every Medallion binary.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, env = "MEDALLION_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log level of Medallion itself (`info`, `debug`, ...), or full tracing directives such as
    /// `info,deltalake_core=debug` [default: `warn` for the client, `info` for the servers].
    #[arg(long, global = true, env = "MEDALLION_LOG")]
    pub log: Option<String>,
}

/// Libraries' own logs only from warnings (errors for the chatty Delta ones), unless the
/// filter names them.
const LIBRARY_LOGS: &str = "warn,deltalake_core=error,buoyant_kernel=error";

impl LogArgs {
    /// Installs the global subscriber; `default_level` applies when `--log` is not given.
    pub fn init(&self, default_level: &str) {
        let level = self.log.as_deref().unwrap_or(default_level);
        let directives = if level.contains(['=', ',']) {
            level.to_string()
        } else {
            [
                "medallion_coordinator",
                "medallion_executor",
                "medallion_client",
                "medallion_cluster",
                "medallion",
            ]
            .iter()
            .fold(LIBRARY_LOGS.to_string(), |d, m| format!("{d},{m}={level}"))
        };
        let filter = tracing_subscriber::EnvFilter::try_new(&directives)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LIBRARY_LOGS));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        let json = match self.log_format {
            LogFormat::Auto => !std::io::stderr().is_terminal(),
            LogFormat::Text => false,
            LogFormat::Json => true,
        };
        if json {
            builder.json().init()
        } else {
            builder.init()
        }
    }
}
