//! DataFusion sessions with pipeline tables registered as `layer.name`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use medallion_pipeline::{Layer, Pipeline, TableRef};
use medallion_proto::TaskError;

use crate::eager::EagerAggregation;
use crate::transient;

/// A session whose catalog has a schema per layer, so SQL can say `silver.orders`, and whose
/// optimizer aggregates before a join to a table on its key ([`EagerAggregation`]). Sessions
/// share the executor's runtime, so all tasks draw on one memory pool.
pub(crate) fn new_session(runtime: &Arc<RuntimeEnv>) -> SessionContext {
    let ctx = medallion_lake::runtime::session(runtime);
    ctx.add_optimizer_rule(Arc::new(EagerAggregation));
    with_layers(ctx)
}

/// A session whose plans run in one partition (no repartitioning, no merge of sorted
/// partitions), on the executor's runtime.
pub(crate) fn single_partition_session(runtime: &Arc<RuntimeEnv>) -> SessionContext {
    let config = medallion_lake::runtime::session_config(runtime).with_target_partitions(1);
    SessionContext::new_with_config_rt(config, runtime.clone())
}

/// A session whose queries run on the Ballista scheduler at `scheduler` (`df://host:port`),
/// across all its executors; tables go there as their data files ([`Read::Files`]).
pub(crate) async fn ballista_session(scheduler: &str) -> Result<SessionContext, TaskError> {
    use ballista::prelude::{SessionConfigExt, SessionContextExt};
    let config = SessionConfig::new_with_ballista()
        .with_information_schema(false)
        .with_ballista_logical_extension_codec(Arc::new(
            medallion_lake::ballista::LakeCodec::default(),
        ));
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .build();
    let ctx = SessionContext::remote_with_state(scheduler, state)
        .await
        .map_err(transient)?;
    Ok(with_layers(ctx))
}

/// Adds a schema per layer to the session's catalog, so SQL can say `silver.orders`.
fn with_layers(ctx: SessionContext) -> SessionContext {
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    for layer in [Layer::Bronze, Layer::Silver, Layer::Gold] {
        // A fresh catalog has no such schema yet, so nothing is replaced.
        let _ = catalog.register_schema(layer.as_str(), Arc::new(MemorySchemaProvider::new()));
    }
    ctx
}

/// How a pinned input is read: through delta-rs (queries on this executor), as its list of
/// data files (Ballista, which cannot ship delta-rs's scan), or only the rows committed after
/// a version (an incremental refresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    Delta,
    Files,
    After(u64),
}

/// The name a pipeline table is registered under, `layer.name`, as its SQL refers to it.
pub(crate) fn table_reference(table: &TableRef) -> datafusion::common::TableReference {
    datafusion::common::TableReference::partial(table.layer.as_str(), table.name.as_str())
}

/// Registers `table` at `version` (pinned by the planner) under its `layer.name`; returns
/// the bytes of its data files. Read whole, a table unique on its key is declared so
/// ([`EagerAggregation`] relies on it); its files or its latest rows are not.
pub(crate) async fn register_table(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    opts: &HashMap<String, String>,
    table: &TableRef,
    version: u64,
    read: Read,
) -> Result<u64, TaskError> {
    let uri = pipeline.table_uri(table);
    let reference = table_reference(table);
    let registered = match read {
        Read::Delta => match medallion_lake::open_version(&uri, opts, version).await {
            Ok(delta) => {
                let key = pipeline.unique_key(table).unwrap_or_default();
                medallion_lake::register_delta_unique_on(ctx, reference, &delta, &key)
                    .await
                    .and_then(|()| medallion_lake::data_bytes(&delta))
            }
            Err(e) => Err(e),
        },
        Read::Files => register_files(
            ctx,
            reference,
            medallion_lake::ballista::pinned_table(&uri, opts, version).await,
            opts,
        ),
        Read::After(from) => register_files(
            ctx,
            reference,
            medallion_lake::changes::appended_rows(&uri, opts, from, version).await,
            opts,
        ),
    };
    registered.map_err(transient)
}

/// Registers data files as a table; returns their bytes.
fn register_files(
    ctx: &SessionContext,
    reference: datafusion::common::TableReference,
    files: anyhow::Result<medallion_lake::StagedFiles>,
    opts: &HashMap<String, String>,
) -> anyhow::Result<u64> {
    let files = files?;
    let bytes = files.bytes();
    files.register_store(ctx, opts)?;
    ctx.register_table(reference, Arc::new(files))?;
    Ok(bytes)
}
