//! Delta tables on Ballista.
//!
//! Ballista ships logical plans from the client to its scheduler, so every table in a query
//! must serialize. delta-rs's own provider does not (its scan has no codec), so a gold query on
//! Ballista reads each input through [`pinned_table`]: the data files of one version, resolved
//! from the Delta log by the client, scanned as plain Parquet (which DataFusion's proto layer
//! serializes). [`LakeCodec`] carries it; the scheduler and executors read no Delta log.
//! Tables with deletion vectors are refused (Medallion does not write them).

use std::sync::Arc;

use anyhow::{Result, bail};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use deltalake::ObjectStore;
use deltalake::kernel::Add;
use serde::{Deserialize, Serialize};

use crate::{StagedFiles, StorageOptions, arrow_schema, open_version, table_url};

/// One version of a Delta table as its list of data files.
pub async fn pinned_table(uri: &str, opts: &StorageOptions, version: u64) -> Result<StagedFiles> {
    let table = open_version(uri, opts, version).await?;
    let snapshot = table.snapshot()?;
    let mut files: Vec<Add> = Vec::new();
    for file in snapshot.log_data() {
        if file.deletion_vector_descriptor().is_some() {
            bail!("{uri} has deletion vectors, which the Ballista scan does not apply");
        }
        // Medallion's file paths need no percent-encoding (sanitized directories, UUID names,
        // date partitions), so the decoded path is the one in the log.
        files.push(Add {
            path: file.path().into_owned(),
            size: file.size(),
            partition_values: file.partition_values_map(),
            ..Default::default()
        });
    }
    let schema = arrow_schema(&snapshot.schema())?;
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    StagedFiles::new(uri, &schema, &partition_columns, files)
}

/// What travels for a [`StagedFiles`]: its schema travels beside it in the plan.
#[derive(Serialize, Deserialize)]
struct Wire {
    root: String,
    partition_columns: Vec<String>,
    files: Vec<Add>,
}

/// Marks our providers in the codec's byte stream.
const TAG: u8 = 0xD1;

/// Ballista's logical codec plus [`StagedFiles`]; the same on client, scheduler and executors.
#[derive(Debug, Default)]
pub struct LakeCodec {
    inner: ballista_core::serde::BallistaLogicalExtensionCodec,
}

fn external(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> DataFusionError {
    DataFusionError::External(e.into())
}

impl LogicalExtensionCodec for LakeCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> datafusion::error::Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        match buf.split_first() {
            Some((&TAG, rest)) => {
                let wire: Wire = serde_json::from_slice(rest).map_err(external)?;
                let files = StagedFiles {
                    root: table_url(&wire.root).map_err(|e| external(e.to_string()))?,
                    schema,
                    partition_columns: wire.partition_columns,
                    files: wire.files,
                };
                Ok(Arc::new(files))
            }
            _ => self
                .inner
                .try_decode_table_provider(buf, table, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> datafusion::error::Result<()> {
        if let Some(files) = node.downcast_ref::<StagedFiles>() {
            let wire = Wire {
                root: files.root.to_string(),
                partition_columns: files.partition_columns.clone(),
                files: files.files.clone(),
            };
            buf.push(TAG);
            return serde_json::to_writer(&mut *buf, &wire).map_err(external);
        }
        self.inner.try_encode_table_provider(table, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> datafusion::error::Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> datafusion::error::Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// The object stores of a Ballista executor: DataFusion's, plus any bucket deltalake's store
/// registry knows (`s3://`), made on first use from this process's environment (`AWS_*`:
/// endpoint, region, credentials). The plans an executor runs name the lake's files but carry
/// no storage options, so the executors' environment is what reaches the store.
#[derive(Debug, Default)]
pub struct LakeStores {
    known: datafusion::execution::object_store::DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        let bucket = url::Url::parse(&format!("{}://{}/", url.scheme(), url.authority()))
            .map_err(external)?;
        let store = deltalake::logstore::store_for(&bucket, StorageOptions::new())
            .map_err(|e| external(format!("no object store for {bucket}: {e}")))?;
        self.known.register_store(&bucket, store.clone());
        Ok(store)
    }
}
