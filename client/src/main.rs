//! `medallion`: run pipelines in this process or on a cluster, validate specs, generate data.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use medallion_client::embedded::LocalExecutors;
use medallion_client::generate::{EcommerceData, TpchData};
use medallion_client::remote::{self, ClusterArgs, Remote, ServerError};
use medallion_client::{pipelines, progress::ProgressBars, sql, summary, tables};
use medallion_cluster::LogArgs;
use medallion_coordinator::auth::{AccessRole, TokenEntry, token_hash};
use medallion_coordinator::lease::{LeaseHeld, RunLease};
use medallion_coordinator::{Coordinator, RunReport, new_run_id};
use medallion_lake::optimize::OptimizeOptions;
use medallion_lake::vacuum::VacuumOptions;
use medallion_pipeline::size::parse_memory_limit;
use medallion_pipeline::{Pipeline, RunDate};
use medallion_proto::{RunInfo, RunState};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "medallion",
    version,
    about = "Medallion data pipelines: bronze, silver and gold on Delta Lake"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline once, in this process (embedded mode, no cluster needed).
    Run {
        /// The pipeline spec (YAML).
        spec: PathBuf,
        /// Tasks run at the same time (default: the number of CPUs).
        #[arg(long)]
        executors: Option<usize>,
        /// Memory the tasks' queries share (e.g. `2GiB`, `512MiB`); sorts, aggregates and
        /// joins spill to disk beyond it. Unbounded when not given.
        #[arg(long, value_parser = parse_memory_limit)]
        memory_limit: Option<usize>,
        /// Print the run report as JSON on stdout instead of the summary.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// When another run of the pipeline holds the lake's run lease, wait for it to end
        /// instead of exiting with code 3.
        #[arg(long)]
        wait: bool,
        /// Compute silver and gold tables from all their input rows, not only what changed
        /// since their last run.
        #[arg(long)]
        full_refresh: bool,
        /// The run's logical date (`YYYY-MM-DD`): templated fields (`{{ ds }}`) are rendered
        /// for the schedule's interval on that day [default: the latest complete interval].
        #[arg(long, value_parser = parse_date)]
        date: Option<chrono::NaiveDate>,
        /// Run again and again, one micro-batch every `--interval`, until SIGINT or SIGTERM:
        /// each run ingests what the sources have that bronze lacks (a topic's new records,
        /// new files) and refreshes the tables downstream. A failed run is reported and the
        /// next one tries again.
        #[arg(long)]
        continuous: bool,
        /// With `--continuous`: from the start of one run to the start of the next (a run
        /// that takes longer is followed at once).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s", requires = "continuous")]
        interval: Duration,
    },
    /// Check a pipeline spec without running it.
    Validate {
        /// The pipeline spec (YAML).
        spec: PathBuf,
    },
    /// Submit a pipeline to the cluster; prints the run id.
    Submit {
        /// The pipeline spec (YAML); relative paths in it resolve from its directory, which
        /// the coordinator and executors must see at the same path.
        spec: PathBuf,
        /// Follow the run to its end, like `watch`.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// As for `run`.
        #[arg(long)]
        full_refresh: bool,
        /// As for `run`: the run's logical date (`YYYY-MM-DD`): templated fields (`{{ ds }}`) are rendered
        /// for the schedule's interval on that day [default: the latest complete interval].
        #[arg(long, value_parser = parse_date)]
        date: Option<chrono::NaiveDate>,
    },
    /// List the cluster's runs, newest first.
    Runs {
        /// At most this many (0: all).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show a run: its state and, table by table, what it did.
    Status {
        run_id: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Follow a run with progress bars until it ends.
    Watch {
        run_id: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show a run's quality check results, from the pipeline's check results table
    /// (`<lake>/_medallion/check_results`, a Delta table to query for the history).
    Checks {
        run_id: String,
        /// The pipeline spec whose lake holds the results.
        #[arg(long, default_value = "pipeline.yaml")]
        pipeline: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show a table's latest versions, newest first: when, what made each (a run's write,
    /// a restore, a compaction), the run, rows and files added and removed.
    History {
        /// The table, as `<layer>.<name>` (`gold.customer_360`).
        table: String,
        /// The pipeline spec whose lake holds the table.
        #[arg(long, default_value = "pipeline.yaml")]
        pipeline: PathBuf,
        /// How many versions to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make a table hold what it held at an earlier version again, as a new version (one
    /// commit; the versions between stay in its history). The next run computes the tables
    /// that read it again, and brings the table itself up to date with its inputs' changes
    /// since that version; a restored bronze table ingests again the files it no longer holds.
    Restore {
        /// The table, as `<layer>.<name>`.
        table: String,
        /// The version to bring back (see `medallion history`).
        #[arg(long)]
        version: u64,
        /// The pipeline spec whose lake holds the table.
        #[arg(long, default_value = "pipeline.yaml")]
        pipeline: PathBuf,
        /// Wait for a run of the pipeline in this lake to end instead of failing.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Delete the files of tables that no version within the retention period needs: files
    /// removed by commits older than the retention, files in no version older than it, and
    /// whatever killed runs left uncommitted (at any age: the run lease keeps runs out).
    /// Time travel to versions before the retention stops working.
    Vacuum {
        /// Tables as `<layer>.<name>`; all of the pipeline's (and their quarantine tables)
        /// when none is given.
        tables: Vec<String>,
        /// The pipeline spec whose lake holds the tables.
        #[arg(long, default_value = "pipeline.yaml")]
        pipeline: PathBuf,
        /// How long removed files are kept for time travel (`7d`, `36h`); the table's
        /// `delta.deletedFileRetentionDuration` (7 days unless set) when not given.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Allow a retention below the table's: versions in between can no longer be read.
        #[arg(long)]
        allow_short_retention: bool,
        /// List what would be deleted, and why; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait for a run of the pipeline in this lake to end instead of failing.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Query the pipeline's tables with SQL (read-only): `gold.customer_360`, with
    /// `VERSION AS OF 3` or `TIMESTAMP AS OF '2026-12-01 10:00:00'` after a table to read an
    /// earlier version. `medallion sql <spec> "<query>"` reads the lake directly;
    /// `medallion sql "<query>"` asks the cluster (its Flight SQL endpoint).
    Sql {
        /// `<spec> <query>`, or `<query>` for the cluster.
        #[arg(num_args = 1..=2, required = true, value_names = ["SPEC", "QUERY"])]
        args: Vec<String>,
        /// Read every table at the versions this run left them (`medallion runs`): one
        /// consistent state of the lake, whatever ran since.
        #[arg(long)]
        snapshot: Option<String>,
        /// On a cluster: the deployed pipeline whose tables the query reads (needed when
        /// more than one is deployed).
        #[arg(long)]
        deployed: Option<String>,
        #[arg(long, value_enum, default_value_t = sql::Format::Table)]
        output: sql::Format,
    },
    /// Show what a run would do, changing nothing: new source files per bronze table, the
    /// tables up to date or computed again and why, incremental or full, the bytes they
    /// would read, where gold would run.
    Plan {
        spec: PathBuf,
        /// Plan a run with `--full-refresh`.
        #[arg(long)]
        full_refresh: bool,
        /// Ask the cluster's leader: the sources and the lake as the coordinators see them
        /// (what `medallion submit` would do).
        #[arg(long)]
        cluster: bool,
        /// Exit 0 when nothing would change, 2 when a run would change tables, 1 on any
        /// error (as `terraform plan -detailed-exitcode`).
        #[arg(long)]
        detailed_exitcode: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Compact tables' small files into files of a target size, optionally clustered by
    /// columns (Z-order), in one commit per table that changes no rows.
    Optimize {
        /// Tables as `<layer>.<name>`; all of the pipeline's when none is given.
        tables: Vec<String>,
        /// The pipeline spec whose lake holds the tables.
        #[arg(long, default_value = "pipeline.yaml")]
        pipeline: PathBuf,
        /// Size of the files written (`128MiB`); the table's `delta.targetFileSize`
        /// (100 MiB unless set) when not given.
        #[arg(long, value_parser = parse_file_size)]
        target_file_size: Option<std::num::NonZeroU64>,
        /// Columns to cluster rows by, comma-separated (`customer_id,order_date`).
        #[arg(long, value_delimiter = ',')]
        sort_by: Vec<String>,
        /// Wait for a run of the pipeline in this lake to end instead of failing.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Cancel a running run: none of its tables commits after this returns.
    Cancel { run_id: String },
    /// Run an ended run again, for the same interval and spec; prints the new run's id.
    Rerun {
        run_id: String,
        /// Keep the tables the run committed; run what failed or was skipped.
        #[arg(long)]
        from_failed: bool,
        /// Recompute this table (`layer.name`) from scratch, and everything that reads it;
        /// a bronze table is ingested again from every file of its source. Repeatable.
        #[arg(long, value_name = "TABLE")]
        full_refresh: Vec<String>,
        /// Follow the new run to its end, like `watch`.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    #[command(flatten)]
    Schedule(ScheduleCommand),
    /// Serve the web UI for a pipeline run in embedded mode: its graph, runs (from the lake's
    /// run history), tables and checks, read-only, until Ctrl-C.
    Ui {
        spec: PathBuf,
        /// Where to serve it (port 0: any free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:7080")]
        listen: std::net::SocketAddr,
    },
    /// List the live executors.
    Executors {
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Make a bearer token for a coordinator's `--tokens` file: prints the token (for its
    /// holder, e.g. in a Secret they mount as --token-file) and the file's entry for it,
    /// which holds only the token's SHA-256.
    Token {
        /// Who will hold it, as the audit log names them.
        name: String,
        #[arg(value_enum)]
        role: AccessRole,
        /// Only these pipelines (names, `*` wildcards), comma-separated; default: all.
        #[arg(long, value_delimiter = ',')]
        pipelines: Vec<String>,
    },
    /// Generate raw data: the e-commerce example's (deterministic, dirty on purpose) or TPC-H's.
    Generate {
        /// Directory to write the data set's source directories into.
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = Dataset::Ecommerce)]
        dataset: Dataset,
        /// Number of orders (ecommerce).
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        /// Number of order files (ecommerce), or of files per large table (tpch).
        #[arg(long, default_value_t = 8)]
        files: usize,
        /// Random seed (ecommerce).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// TPC-H scale factor (tpch): 1 is 6M line items.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

/// The commands about deployed pipelines (served by the cluster's leader).
#[derive(Subcommand)]
enum ScheduleCommand {
    /// Register a pipeline on the cluster, or update its spec (a new version when it
    /// changed); the leader runs it on its schedule.
    Deploy {
        spec: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// List the deployed pipelines: schedule, paused, next and last run, backfills, the
    /// stalest table; with a pipeline's name, each of its tables and when it last changed.
    Pipelines {
        pipeline: Option<String>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Stop scheduling a deployed pipeline's runs (runs already queued and backfills go on).
    Pause {
        pipeline: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Schedule a paused pipeline again (missed intervals run if it catches up).
    Resume {
        pipeline: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Remove a pipeline from the cluster's schedule; its tables and runs stay.
    Undeploy {
        pipeline: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run a deployed pipeline now; prints the run id.
    Trigger {
        pipeline: String,
        /// The logical date (`YYYY-MM-DD`) [default: the latest complete interval].
        #[arg(long, value_parser = parse_date)]
        date: Option<chrono::NaiveDate>,
        /// Follow the run to its end, like `watch`.
        #[arg(long)]
        wait: bool,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Run a deployed pipeline once per interval of the logical dates --from to --to, in
    /// order, at most max_active_runs at a time.
    Backfill {
        pipeline: String,
        #[arg(long, value_parser = parse_date)]
        from: chrono::NaiveDate,
        #[arg(long, value_parser = parse_date)]
        to: chrono::NaiveDate,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    /// orders/ (JSON lines), customers/ (CSV), products/ (Parquet) of examples/ecommerce.
    Ecommerce,
    /// The eight TPC-H tables as Parquet, for examples/tpch.
    Tpch,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Exit codes: 0 success, 1 the run failed (or the cluster could not be reached), 2 the spec,
/// the command or the request is wrong, 3 another run of the pipeline holds the lake, 130
/// interrupted by SIGINT or SIGTERM.
const RUN_FAILED: u8 = 1;
const BAD_INPUT: u8 = 2;
const BUSY: u8 = 3;
/// 128 + SIGINT, as shells report a process stopped by Ctrl-C.
const INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init("warn");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(RUN_FAILED);
        }
    };
    let outcome = runtime.block_on(execute(cli.command, cli.cluster));
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        match e.downcast_ref::<ServerError>() {
            Some(s) if s.is_bad_request() => ExitCode::from(BAD_INPUT),
            _ => ExitCode::from(RUN_FAILED),
        }
    })
}

/// A logical date given on the command line, or the latest interval.
fn run_date(date: Option<chrono::NaiveDate>) -> RunDate {
    date.map_or(RunDate::Latest, RunDate::Date)
}

fn parse_date(text: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| format!("'{text}' is not a date (YYYY-MM-DD): {e}"))
}

/// Runs one command; errors not answered with an exit code of their own end in `main`.
async fn execute(command: Command, cluster: ClusterArgs) -> Result<ExitCode> {
    match command {
        Command::Validate { spec } => validate(&spec),
        Command::Run {
            spec,
            executors,
            memory_limit,
            output,
            wait,
            full_refresh,
            date,
            continuous,
            interval,
        } => {
            let options = RunOptions {
                executors,
                memory_limit,
                output,
                wait,
                full_refresh,
                date: run_date(date),
                continuous: continuous.then_some(interval),
            };
            run_embedded(&spec, options).await
        }
        Command::Generate {
            dir,
            dataset,
            orders,
            files,
            seed,
            scale,
        } => match dataset {
            Dataset::Ecommerce => generate_ecommerce(&dir, orders, files, seed),
            Dataset::Tpch => generate_tpch(&dir, scale, files),
        },
        Command::Submit {
            spec,
            wait,
            output,
            full_refresh,
            date,
        } => submit(&spec, wait, output, full_refresh, run_date(date), &cluster).await,
        Command::Watch { run_id, output } => watch(&cluster, &run_id, output).await,
        Command::Status { run_id, output } => {
            let info = Remote::connect(&cluster).await?.run(&run_id).await?;
            print_run(&info, output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { limit, output } => {
            let runs = Remote::connect(&cluster).await?.runs(limit).await?;
            print_runs(&runs, output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { run_id } => {
            let info = Remote::connect(&cluster).await?.cancel(&run_id).await?;
            println!("run {} {}", info.run_id, remote::state_name(&info));
            Ok(ExitCode::SUCCESS)
        }
        Command::Checks {
            run_id,
            pipeline,
            output,
        } => checks(&run_id, &pipeline, output).await,
        Command::History {
            table,
            pipeline,
            limit,
            output,
        } => {
            let history = async |p: &Pipeline| tables::history(p, &table, limit).await;
            table_operation(&pipeline, output, history).await
        }
        Command::Restore {
            table,
            version,
            pipeline,
            wait,
            output,
        } => {
            let restore = async |p: &Pipeline| tables::restore(p, &table, version, wait).await;
            table_operation(&pipeline, output, restore).await
        }
        Command::Sql {
            args,
            snapshot,
            deployed,
            output,
        } => {
            sql::check_destination(output)?;
            let out = std::io::BufWriter::new(std::io::stdout());
            let snapshot = snapshot.as_deref();
            match &args[..] {
                [spec, query] => {
                    let sql = async |p: &Pipeline| sql::run(p, query, snapshot, output, out).await;
                    with_pipeline(Path::new(spec), sql).await
                }
                [query] => {
                    let rows = remote::query(&cluster, query, deployed.as_deref(), snapshot);
                    sql::write(rows.await?, output, out).await?;
                    Ok(ExitCode::SUCCESS)
                }
                _ => unreachable!("clap takes one or two values"),
            }
        }
        Command::Plan {
            spec,
            full_refresh,
            cluster: remote,
            detailed_exitcode,
            output,
        } => {
            let mut changes = false;
            let plan = async |p: &Pipeline| {
                let plan = if remote {
                    Remote::connect(&cluster)
                        .await?
                        .plan(p, full_refresh)
                        .await?
                } else {
                    medallion_coordinator::plan::plan(p, full_refresh).await?
                };
                changes = plan.changes();
                Ok(plan)
            };
            let code = table_operation(&spec, output, plan).await?;
            Ok(
                match (detailed_exitcode, code == ExitCode::SUCCESS, changes) {
                    (false, _, _) => code,
                    (true, false, _) => ExitCode::from(RUN_FAILED),
                    (true, true, false) => ExitCode::SUCCESS,
                    (true, true, true) => ExitCode::from(BAD_INPUT),
                },
            )
        }
        Command::Vacuum {
            tables,
            pipeline,
            retention,
            allow_short_retention,
            dry_run,
            wait,
            output,
        } => {
            let options = VacuumOptions {
                retention,
                allow_short_retention,
                dry_run,
                abandoned: false,
            };
            let vacuum = async |p: &Pipeline| tables::vacuum(p, &tables, options, wait).await;
            table_operation(&pipeline, output, vacuum).await
        }
        Command::Optimize {
            tables,
            pipeline,
            target_file_size,
            sort_by,
            wait,
            output,
        } => {
            let options = OptimizeOptions {
                target_size: target_file_size,
                sort_by,
                min_files: 0,
            };
            let optimize = async |p: &Pipeline| tables::optimize(p, &tables, &options, wait).await;
            table_operation(&pipeline, output, optimize).await
        }
        Command::Schedule(command) => schedule_command(command, &cluster).await,
        Command::Rerun {
            run_id,
            from_failed,
            full_refresh,
            wait,
            output,
        } => {
            let mut remote = Remote::connect(&cluster).await?;
            let info = remote.rerun(&run_id, from_failed, &full_refresh).await?;
            if !wait {
                println!("{}", info.run_id);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("re-running {run_id} as {}", info.run_id);
            watch(&cluster, &info.run_id, output).await
        }
        Command::Ui { spec, listen } => {
            let pipeline = match load(&spec, RunDate::Latest) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let name = pipeline.name().to_string();
            let console =
                std::sync::Arc::new(medallion_coordinator::ui::LakeConsole::new(pipeline));
            let stop = tokio_util::sync::CancellationToken::new();
            let address =
                medallion_coordinator::ui::serve(listen, console, None, stop.clone()).await?;
            println!("Medallion UI for {name}: http://{address}/");
            medallion_cluster::signal::shutdown().await;
            stop.cancel();
            Ok(ExitCode::SUCCESS)
        }
        Command::Executors { output } => {
            let executors = Remote::connect(&cluster).await?.executors().await?;
            print_executors(&executors, output);
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            name,
            role,
            pipelines,
        } => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            let entry = TokenEntry {
                name,
                role,
                sha256: token_hash(&token),
                pipelines,
            };
            println!("token: {token}");
            println!("entry: - {}", serde_json::to_string(&entry)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The commands about deployed pipelines.
async fn schedule_command(command: ScheduleCommand, cluster: &ClusterArgs) -> Result<ExitCode> {
    let mut remote = Remote::connect(cluster).await?;
    let (info, output) = match command {
        ScheduleCommand::Deploy { spec, output } => {
            let pipeline = match load(&spec, RunDate::Latest) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            (remote.deploy(&pipeline).await?, output)
        }
        ScheduleCommand::Pipelines {
            pipeline: None,
            output,
        } => {
            let all = remote.pipelines().await?;
            match output {
                Output::Json => {
                    let list = all.iter().map(pipelines::json).collect();
                    println!("{:#}", serde_json::Value::Array(list));
                }
                Output::Text => println!("{}", pipelines::table(&all, chrono::Utc::now())),
            }
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::Pipelines {
            pipeline: Some(name),
            output,
        } => {
            let all = remote.pipelines().await?;
            let Some(info) = all.into_iter().find(|p| p.name == name) else {
                anyhow::bail!("no pipeline named '{name}' is deployed (see `medallion pipelines`)");
            };
            if output == Output::Text {
                let now = chrono::Utc::now();
                let tables = pipelines::freshness_table(&info, now);
                println!("{}\n\n{tables}", pipelines::table(&[info], now));
                return Ok(ExitCode::SUCCESS);
            }
            (info, output)
        }
        ScheduleCommand::Pause { pipeline, output } => {
            (remote.set_paused(&pipeline, true).await?, output)
        }
        ScheduleCommand::Resume { pipeline, output } => {
            (remote.set_paused(&pipeline, false).await?, output)
        }
        ScheduleCommand::Undeploy { pipeline, output } => {
            (remote.undeploy(&pipeline).await?, output)
        }
        ScheduleCommand::Backfill {
            pipeline,
            from,
            to,
            output,
        } => {
            let (from, to) = (from.to_string(), to.to_string());
            (remote.backfill(&pipeline, &from, &to).await?, output)
        }
        ScheduleCommand::Trigger {
            pipeline,
            date,
            wait,
            output,
        } => {
            let date = date.map(|d| d.to_string());
            let info = remote.trigger(&pipeline, date.as_deref()).await?;
            if !wait {
                println!("{}", info.run_id);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("triggered run {} ({})", info.run_id, info.ds);
            return watch(cluster, &info.run_id, output).await;
        }
    };
    match output {
        Output::Json => println!("{:#}", pipelines::json(&info)),
        Output::Text => println!("{}", pipelines::table(&[info], chrono::Utc::now())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads a spec for the run of `date`; a spec that does not validate is printed and answered
/// with exit code 2.
fn load(spec: &Path, date: RunDate) -> Result<Pipeline, ExitCode> {
    Pipeline::load_for(spec, date).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(BAD_INPUT)
    })
}

async fn submit(
    spec: &Path,
    wait: bool,
    output: Output,
    full_refresh: bool,
    date: RunDate,
    cluster: &ClusterArgs,
) -> Result<ExitCode> {
    let pipeline = match load(spec, date) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let mut remote = Remote::connect(cluster).await?;
    let info = remote.submit(&pipeline, full_refresh).await?;
    if !wait {
        println!("{}", info.run_id);
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("submitted run {}", info.run_id);
    watch(cluster, &info.run_id, output).await
}

async fn checks(run_id: &str, spec: &Path, output: Output) -> Result<ExitCode> {
    let pipeline = match load(spec, RunDate::Latest) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    match medallion_client::checks::of_run(&pipeline, run_id).await {
        Ok(batches) => {
            print_batches(&batches, output)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(BAD_INPUT))
        }
    }
}

/// Runs a table operation (`history`, `restore`, `vacuum`, `optimize`) on the lake of the
/// pipeline at `spec` and prints what it did, for people or as JSON.
async fn table_operation<T: Serialize + std::fmt::Display>(
    spec: &Path,
    output: Output,
    operation: impl AsyncFnOnce(&Pipeline) -> Result<T>,
) -> Result<ExitCode> {
    with_pipeline(spec, async |p: &Pipeline| {
        let done = operation(p).await?;
        match output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
            Output::Text => print!("{done}"),
        }
        Ok(())
    })
    .await
}

/// Runs `operation` on the pipeline at `spec`. Exit code 3 when a run holds the pipeline's
/// lease, 2 on any other error.
async fn with_pipeline(
    spec: &Path,
    operation: impl AsyncFnOnce(&Pipeline) -> Result<()>,
) -> Result<ExitCode> {
    let pipeline = match load(spec, RunDate::Latest) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    match operation(&pipeline).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.is::<LeaseHeld>() => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(BUSY))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(BAD_INPUT))
        }
    }
}

fn parse_file_size(text: &str) -> Result<std::num::NonZeroU64, String> {
    let size = medallion_pipeline::size::parse_size(text)?;
    std::num::NonZeroU64::new(size as u64).ok_or_else(|| "a file size above 0".to_string())
}

/// Rows as a table for people, or as a JSON array of objects.
fn print_batches(batches: &[RecordBatch], output: Output) -> Result<()> {
    match output {
        Output::Text => println!("{}", pretty_format_batches(batches)?),
        Output::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            println!("{}", String::from_utf8(writer.into_inner())?);
        }
    }
    Ok(())
}

fn validate(spec: &Path) -> Result<ExitCode> {
    match Pipeline::load(spec) {
        Ok(p) => {
            println!(
                "{}: pipeline '{}' is valid ({} sources, {} tables)",
                spec.display(),
                p.name(),
                p.spec.sources.len(),
                p.dag.tables().count()
            );
            print!("{}", summary::render_dag(&p));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprint!("{e}");
            Ok(ExitCode::from(BAD_INPUT))
        }
    }
}

/// How `medallion run` runs a pipeline.
struct RunOptions {
    executors: Option<usize>,
    memory_limit: Option<usize>,
    output: Output,
    wait: bool,
    full_refresh: bool,
    date: RunDate,
    /// Run again every interval (`--continuous`).
    continuous: Option<Duration>,
}

async fn run_embedded(spec: &Path, options: RunOptions) -> Result<ExitCode> {
    let RunOptions {
        executors,
        memory_limit,
        output,
        wait,
        mut full_refresh,
        date,
        continuous,
    } = options;
    let pipeline = match load(spec, date) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let slots =
        executors.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let bars = ProgressBars::new(std::io::stderr().is_terminal());
    let executors = LocalExecutors::new(slots, memory_limit)?;
    // One listener for the whole process, so a signal between two runs is not missed.
    let mut stop = std::pin::pin!(medallion_cluster::signal::shutdown());
    loop {
        let started = tokio::time::Instant::now();
        let run_id = new_run_id(pipeline.name());
        // Micro-batches wait for a run that holds the lake: the next one follows it.
        let lease = match RunLease::acquire(&pipeline, &run_id, wait || continuous.is_some()).await
        {
            Ok(lease) => lease,
            Err(e) if e.is::<LeaseHeld>() => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(BUSY));
            }
            Err(e) => return Err(e),
        };
        let coordinator = Coordinator::new(&executors, &bars)
            .with_full_refresh(full_refresh)
            .with_runtime(executors.runtime());
        let run = coordinator.run(&pipeline, &run_id);
        let report = tokio::select! {
            report = run => report,
            () = &mut stop => {
                // Tables commit atomically: each is either committed already or left as it was.
                executors.remove_spill_files();
                eprintln!("error: run {run_id} interrupted; the tables it had not committed are unchanged");
                return Ok(ExitCode::from(INTERRUPTED));
            }
        };
        print_report(&report, output);
        drop(lease);
        let code = if report.succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(RUN_FAILED)
        };
        let Some(interval) = continuous else {
            return Ok(code);
        };
        // Only the first micro-batch rebuilds; a failed one is retried by the next.
        full_refresh = false;
        tokio::select! {
            () = tokio::time::sleep_until(started + interval) => {}
            () = &mut stop => return Ok(code),
        }
    }
}

fn print_report(report: &RunReport, output: Output) {
    match output {
        Output::Json => match serde_json::to_string_pretty(report) {
            Ok(json) => println!("{json}"),
            Err(e) => eprintln!("error: cannot render the report: {e}"),
        },
        Output::Text => print!("{}", summary::render(report)),
    }
}

/// Follows a run to its end with progress bars; if the leader changes on the way, follows
/// the new one. Exits 0 only when the run succeeded.
async fn watch(cluster: &ClusterArgs, run_id: &str, output: Output) -> Result<ExitCode> {
    let bars = ProgressBars::new(std::io::stderr().is_terminal());
    // The leader went away: a standby takes over within its lease TTL.
    let reconnect =
        medallion_cluster::retry::limited(Duration::from_secs(1), Duration::from_secs(1), 60);
    let attempt = || async { Remote::connect(cluster).await?.watch(run_id, &bars).await };
    let info = medallion_cluster::retry::with_first_error(reconnect, attempt, |e| {
        let bad_request = e
            .downcast_ref::<ServerError>()
            .is_some_and(ServerError::is_bad_request);
        if !bad_request {
            tracing::warn!(
                error = format!("{e:#}"),
                "lost the coordinator; reconnecting"
            );
        }
        !bad_request
    })
    .await?;
    print_run(&info, output);
    Ok(
        if RunState::try_from(info.state) == Ok(RunState::Succeeded) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(RUN_FAILED)
        },
    )
}

fn run_json(info: &RunInfo) -> serde_json::Value {
    serde_json::json!({
        "run_id": info.run_id,
        "pipeline": info.pipeline,
        "state": remote::state_name(info),
        "ds": info.ds,
        "interval_start_ms": info.interval_start_micros / 1000,
        "interval_end_ms": info.interval_end_micros / 1000,
        "trigger": info.trigger,
        "spec_version": info.spec_version,
        "submitted_ms": info.submitted_ms,
        "ended_ms": info.ended_ms,
        "message": info.message,
        "report": serde_json::from_str::<serde_json::Value>(&info.report_json).unwrap_or_default(),
    })
}

fn print_run(info: &RunInfo, output: Output) {
    if output == Output::Json {
        println!("{:#}", run_json(info));
        return;
    }
    println!(
        "run {} ({}) {}{}",
        info.run_id,
        info.pipeline,
        remote::state_name(info),
        if info.message.is_empty() {
            String::new()
        } else {
            format!(": {}", info.message)
        }
    );
    if let Some(report) = info.report() {
        print!("{}", summary::render(&report));
    }
}

fn print_runs(runs: &[RunInfo], output: Output) {
    if output == Output::Json {
        let runs: Vec<_> = runs.iter().map(run_json).collect();
        println!("{:#}", serde_json::Value::Array(runs));
        return;
    }
    println!(
        "{:<48} {:<16} {:<10} {:<20} {:>9}",
        "RUN", "PIPELINE", "STATE", "SUBMITTED", "SECONDS"
    );
    for run in runs {
        let submitted = chrono::DateTime::from_timestamp_millis(run.submitted_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let seconds = if run.ended_ms > 0 {
            format!("{:.1}", (run.ended_ms - run.submitted_ms) as f64 / 1000.0)
        } else {
            "-".into()
        };
        println!(
            "{:<48} {:<16} {:<10} {:<20} {:>9}",
            run.run_id,
            run.pipeline,
            remote::state_name(run),
            submitted,
            seconds
        );
    }
}

fn print_executors(executors: &[medallion_proto::ExecutorStatus], output: Output) {
    let rows = executors
        .iter()
        .filter_map(|e| e.info.as_ref().map(|i| (i, e.running)));
    if output == Output::Json {
        let list: Vec<_> = rows
            .map(|(i, running)| {
                serde_json::json!({ "id": i.id, "address": i.address, "slots": i.slots,
                                    "running": running, "started_ms": i.started_ms })
            })
            .collect();
        println!("{:#}", serde_json::Value::Array(list));
        return;
    }
    println!(
        "{:<32} {:<28} {:>5} {:>7}",
        "EXECUTOR", "ADDRESS", "SLOTS", "RUNNING"
    );
    for (info, running) in rows {
        println!(
            "{:<32} {:<28} {:>5} {:>7}",
            info.id, info.address, info.slots, running
        );
    }
}

fn generate_ecommerce(dir: &Path, orders: usize, files: usize, seed: u64) -> Result<ExitCode> {
    let data = EcommerceData {
        orders,
        order_files: files,
        seed,
    };
    let g = data.write(dir)?;
    println!(
        "wrote {} order lines in {files} files, {} customers, {} products to {}",
        g.order_lines,
        g.customers,
        g.products,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn generate_tpch(dir: &Path, scale: f64, files: usize) -> Result<ExitCode> {
    if scale.is_nan() || scale <= 0.0 {
        return Err(anyhow!("--scale must be above 0, not {scale}"));
    }
    let data = TpchData {
        scale,
        files: files.max(1),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    for (table, rows) in data.write(dir)? {
        println!("{:>10} {rows:>12} rows", table.name());
    }
    println!("wrote TPC-H scale factor {scale} to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
