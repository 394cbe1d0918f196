//! The Flight SQL endpoint: BI tools, notebooks and services query the deployed pipelines'
//! tables over Arrow Flight SQL (JDBC, ODBC and ADBC drivers), read-only, on the
//! coordinator's port with the client API's authentication (any role may read; a token
//! limited to some pipelines reads only those).
//!
//! A query reads the tables of one deployed pipeline: the one deployed, or the one the
//! `x-medallion-pipeline` call header names. Tables are `layer.table` or
//! `pipeline.layer.table`; a tool browsing the endpoint sees each pipeline the caller may
//! read as a catalog, its layers as schemas and its tables with their columns. With `x-medallion-snapshot: <run>` every table
//! is read at that run's versions ([`crate::snapshots`]). Queries are planned by
//! [`crate::sql::query`] (time travel included); the versions planned against travel in the
//! ticket, so fetching the results reads what was planned, and the rows are streamed batch by
//! batch.
//!
//! ```text
//! import adbc_driver_flightsql.dbapi as flightsql
//! conn = flightsql.connect("grpc://coordinator:7070", db_kwargs={
//!     "adbc.flight.sql.authorization_header": "Bearer <token>",
//!     "adbc.flight.sql.rpc.call_header.x-medallion-snapshot": "<run>"})
//! conn.cursor().execute("SELECT * FROM gold.customer_360").fetch_arrow_table()
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetTables, CommandStatementQuery,
    ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Stream, TryStreamExt};
use medallion_pipeline::Pipeline;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::scheduler::Scheduler;
use crate::snapshots::{self, Snapshot};

/// The call header naming the pipeline whose tables a query reads.
pub const PIPELINE_HEADER: &str = "x-medallion-pipeline";
/// The call header naming the run whose snapshot a query reads.
pub const SNAPSHOT_HEADER: &str = "x-medallion-snapshot";

/// Serves Flight SQL over the deployed pipelines' lakes.
pub struct LakeFlight {
    scheduler: Arc<Scheduler>,
}

impl LakeFlight {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self { scheduler }
    }

    /// The deployed pipeline a call reads, if the caller may read it.
    async fn pipeline<T>(
        &self,
        request: &Request<T>,
        name: Option<&str>,
    ) -> Result<Arc<Pipeline>, Status> {
        let header = request
            .metadata()
            .get(PIPELINE_HEADER)
            .and_then(|v| v.to_str().ok());
        let pipeline = self.scheduler.deployed(name.or(header)).await?;
        if let Some(caller) = request.extensions().get::<Caller>()
            && !caller.granted(pipeline.name())
        {
            return Err(Status::permission_denied(format!(
                "'{}' may not read pipeline '{}'",
                caller.name,
                pipeline.name()
            )));
        }
        Ok(pipeline)
    }
}

impl LakeFlight {
    /// The deployed pipelines the caller may read.
    async fn readable<T>(&self, request: &Request<T>) -> Result<Vec<Arc<Pipeline>>, Status> {
        let caller = request.extensions().get::<Caller>();
        let mut all = self.scheduler.deployed_all().await?;
        all.retain(|p| caller.is_none_or(|c| c.granted(p.name())));
        Ok(all)
    }
}

/// A `FlightInfo` of results of `schema` whose one ticket holds `command` (a statement's
/// handle, or a listing command itself).
fn flight_info(
    command: arrow_flight::sql::Any,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.encode_to_vec());
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(request.into_inner());
    Ok(Response::new(info))
}

/// A stream of the one batch a listing builds.
fn one_batch(batch: Result<RecordBatch, FlightError>) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from),
    )
}

/// What a ticket carries from planning to fetching.
#[derive(Serialize, Deserialize)]
struct Handle {
    pipeline: String,
    query: String,
    /// `layer.table` -> the version planned against.
    versions: BTreeMap<String, u64>,
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

fn invalid(e: anyhow::Error) -> Status {
    Status::invalid_argument(format!("{e:#}"))
}

#[tonic::async_trait]
impl FlightSqlService for LakeFlight {
    type FlightService = LakeFlight;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let pipeline = self.pipeline(&request, None).await?;
        let run = request
            .metadata()
            .get(SNAPSHOT_HEADER)
            .and_then(|v| v.to_str().ok());
        let snapshot = match run {
            Some(run) => Some(snapshots::of_run(&pipeline, run).await.map_err(invalid)?),
            None => None,
        };
        let planned = crate::sql::query(&pipeline, &query.query, snapshot.as_ref())
            .await
            .map_err(invalid)?;
        let handle = Handle {
            pipeline: pipeline.name().to_string(),
            query: query.query,
            versions: planned
                .versions
                .iter()
                .map(|(t, v)| (t.to_string(), *v))
                .collect(),
        };
        let statement = TicketStatementQuery {
            statement_handle: serde_json::to_vec(&handle)
                .map_err(|e| Status::internal(e.to_string()))?
                .into(),
        };
        flight_info(
            statement.as_any(),
            planned.frame.schema().as_arrow(),
            request,
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle: Handle = serde_json::from_slice(&ticket.statement_handle)
            .map_err(|e| Status::invalid_argument(format!("not a ticket of ours: {e}")))?;
        let pipeline = self.pipeline(&request, Some(&handle.pipeline)).await?;
        let planned = Snapshot {
            run_id: String::new(),
            versions: handle
                .versions
                .iter()
                .filter_map(|(t, v)| Some((t.parse().ok()?, *v)))
                .collect(),
        };
        let query = crate::sql::query(&pipeline, &handle.query, Some(&planned))
            .await
            .map_err(invalid)?;
        let schema = Arc::new(query.frame.schema().as_arrow().clone());
        let rows = query
            .frame
            .execute_stream()
            .await
            .map_err(|e| Status::internal(format!("{e:#}")))?
            .map_err(|e| FlightError::ExternalError(Box::new(e)));
        let stream: DoGetStream = Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(rows)
                .map_err(Status::from),
        );
        Ok(Response::new(stream))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        flight_info(query.as_any(), &schema, request)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(query.as_any(), &schema, request)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        flight_info(query.as_any(), &schema, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for pipeline in self.readable(&request).await? {
            builder.append(pipeline.name());
        }
        Ok(Response::new(one_batch(builder.build())))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for pipeline in self.readable(&request).await? {
            let layers: BTreeSet<String> =
                pipeline.dag.tables().map(|t| t.layer.to_string()).collect();
            for layer in layers {
                builder.append(pipeline.name(), layer);
            }
        }
        Ok(Response::new(one_batch(builder.build())))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let with_columns = query.include_schema;
        let mut builder = query.into_builder();
        for pipeline in self.readable(&request).await? {
            let opts = pipeline.lake_options();
            for table in pipeline.dag.tables() {
                // A table no run has written yet has no columns to show.
                let mut columns = Schema::empty();
                if with_columns {
                    let uri = pipeline.table_uri(table);
                    let opened = medallion_lake::open_table(&uri, &opts).await;
                    if let Some(t) = opened.map_err(|e| Status::internal(format!("{e:#}")))? {
                        let schema = t.snapshot().map_err(|e| Status::internal(e.to_string()))?;
                        columns = medallion_lake::arrow_schema(&schema.schema())
                            .map_err(|e| Status::internal(format!("{e:#}")))?
                            .as_ref()
                            .clone();
                    }
                }
                builder
                    .append(
                        pipeline.name(),
                        table.layer.to_string(),
                        &table.name,
                        "TABLE",
                        &columns,
                    )
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        Ok(Response::new(one_batch(builder.build())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
