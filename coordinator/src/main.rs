//! `medallion-coordinator`: see [`medallion_coordinator::process`].

use std::process::ExitCode;

use clap::Parser;
use medallion_coordinator::process::{CoordinatorArgs, serve};

#[tokio::main]
async fn main() -> ExitCode {
    let args = CoordinatorArgs::parse();
    args.log.init("info");
    medallion_cluster::exit_code("coordinator", serve(args).await)
}
