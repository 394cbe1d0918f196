//! `medallion`: run and validate pipelines, generate example data.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use medallion_client::embedded::LocalExecutors;
use medallion_client::generate::{EcommerceData, TpchData};
use medallion_client::{progress::ProgressBars, summary};
use medallion_coordinator::Coordinator;
use medallion_pipeline::Pipeline;

#[derive(Parser)]
#[command(
    name = "medallion",
    version,
    about = "Medallion data pipelines: bronze, silver and gold on Delta Lake"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level of Medallion itself (`info`, `debug`, ...), or full tracing directives
    /// such as `info,deltalake_core=debug`.
    #[arg(long, global = true, env = "MEDALLION_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline once, in this process (embedded mode).
    Run {
        /// The pipeline spec (YAML).
        spec: PathBuf,
        /// Tasks run at the same time (default: the number of CPUs).
        #[arg(long)]
        executors: Option<usize>,
        /// Memory the tasks' queries share (e.g. `2GiB`, `512MiB`); sorts, aggregates and
        /// joins spill to disk beyond it. Unbounded when not given.
        #[arg(long, value_parser = parse_size)]
        memory_limit: Option<usize>,
        /// Print the run report as JSON on stdout instead of the summary.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Check a pipeline spec without running it.
    Validate {
        /// The pipeline spec (YAML).
        spec: PathBuf,
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

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    /// orders/ (JSON lines), customers/ (CSV), products/ (Parquet) of examples/ecommerce.
    Ecommerce,
    /// The eight TPC-H tables as Parquet, for examples/tpch.
    Tpch,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Exit codes: 0 success, 1 the run failed, 2 the spec or the command is wrong.
const RUN_FAILED: u8 = 1;
const BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
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
    runtime.block_on(async move {
        match cli.command {
            Command::Validate { spec } => match Pipeline::load(&spec) {
                Ok(p) => {
                    println!(
                        "{}: pipeline '{}' is valid ({} sources, {} tables)",
                        spec.display(),
                        p.name(),
                        p.spec.sources.len(),
                        p.dag.tables().count()
                    );
                    print!("{}", summary::render_dag(&p));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::from(BAD_INPUT)
                }
            },
            Command::Run {
                spec,
                executors,
                memory_limit,
                output,
            } => {
                let pipeline = match Pipeline::load(&spec) {
                    Ok(p) => p,
                    Err(e) => {
                        eprint!("{e}");
                        return ExitCode::from(BAD_INPUT);
                    }
                };
                let slots = executors
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
                let bars = ProgressBars::new(std::io::stderr().is_terminal());
                let executors = match LocalExecutors::new(slots, memory_limit) {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::from(RUN_FAILED);
                    }
                };
                let report = Coordinator::new(&executors, &bars).run(&pipeline).await;
                match output {
                    Output::Json => match serde_json::to_string_pretty(&report) {
                        Ok(json) => println!("{json}"),
                        Err(e) => eprintln!("error: cannot render the report: {e}"),
                    },
                    Output::Text => print!("{}", summary::render(&report)),
                }
                if report.succeeded {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(RUN_FAILED)
                }
            }
            Command::Generate {
                dir,
                dataset,
                orders,
                files,
                seed,
                scale,
            } => {
                let written = match dataset {
                    Dataset::Ecommerce => generate_ecommerce(&dir, orders, files, seed),
                    Dataset::Tpch => generate_tpch(&dir, scale, files),
                };
                match written {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::from(RUN_FAILED)
                    }
                }
            }
        }
    })
}

fn generate_ecommerce(dir: &Path, orders: usize, files: usize, seed: u64) -> anyhow::Result<()> {
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
    Ok(())
}

fn generate_tpch(dir: &Path, scale: f64, files: usize) -> anyhow::Result<()> {
    let data = TpchData {
        scale,
        files: files.max(1),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    for (table, rows) in data.write(dir)? {
        println!("{:>10} {rows:>12} rows", table.name());
    }
    println!("wrote TPC-H scale factor {scale} to {}", dir.display());
    Ok(())
}

/// Parses a size such as `2GiB`, `512MiB`, `1G` or a number of bytes.
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use KiB, MiB, GiB)"
            ));
        }
    };
    Ok((number * scale as f64) as usize)
}

/// Libraries' own logs only from warnings (errors for the chatty Delta ones), unless the
/// filter names them.
const LIBRARY_LOGS: &str = "warn,deltalake_core=error,buoyant_kernel=error";

fn init_logging(format: LogFormat, filter: &str) {
    let directives = if filter.contains(['=', ',']) {
        filter.to_string()
    } else {
        format!(
            "{LIBRARY_LOGS},medallion_coordinator={filter},medallion_executor={filter},medallion_client={filter},medallion={filter}"
        )
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LIBRARY_LOGS));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
