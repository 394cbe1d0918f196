//! `medallion-executor`: see [`medallion_executor::process`].

use std::process::ExitCode;

use clap::Parser;
use medallion_executor::process::{ExecutorArgs, serve};

fn main() -> ExitCode {
    let args = ExecutorArgs::parse();
    args.log.init("info");
    // Ballista's plans recurse deeply: its own binaries run with large thread stacks too.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build();
    match runtime {
        Ok(runtime) => medallion_cluster::exit_code("executor", runtime.block_on(serve(args))),
        Err(e) => medallion_cluster::exit_code("executor", Err(e.into())),
    }
}
