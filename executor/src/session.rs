//! DataFusion sessions with pipeline tables registered as `layer.name`.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::MemorySchemaProvider;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use medallion_pipeline::{Layer, Pipeline, TableRef};
use medallion_proto::TaskError;

use crate::transient;

/// A session whose catalog has a schema per layer, so SQL can say `silver.orders`. Sessions
/// share the executor's runtime, so all tasks draw on one memory pool.
pub(crate) fn new_session(runtime: &Arc<RuntimeEnv>) -> SessionContext {
    let config = SessionConfig::new().with_information_schema(false);
    let ctx = SessionContext::new_with_config_rt(config, runtime.clone());
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    for layer in [Layer::Bronze, Layer::Silver, Layer::Gold] {
        // A fresh catalog has no such schema yet, so nothing is replaced.
        let _ = catalog.register_schema(layer.as_str(), Arc::new(MemorySchemaProvider::new()));
    }
    ctx
}

/// Registers `table` at `version` (pinned by the planner) under its `layer.name`.
pub(crate) async fn register_table(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    opts: &HashMap<String, String>,
    table: &TableRef,
    version: u64,
) -> Result<(), TaskError> {
    let uri = pipeline.table_uri(table);
    let delta = medallion_lake::open_version(&uri, opts, version)
        .await
        .map_err(transient)?;
    let reference =
        datafusion::common::TableReference::partial(table.layer.as_str(), table.name.as_str());
    medallion_lake::register_delta(ctx, reference, &delta)
        .await
        .map_err(transient)?;
    Ok(())
}
