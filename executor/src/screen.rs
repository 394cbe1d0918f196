//! `drop` and `quarantine` checks, applied to a silver or gold table's rows: rows failing a
//! check are counted and left out, and rows failing a `quarantine` check are written to
//! `<table>__quarantine` instead, with the run id, the names of the checks they failed and
//! when. The coordinator commits both, once.
//!
//! Gold screens the rows it writes. Silver screens every row that passed its filters, before
//! keeping the latest row per key: a failing update of a key is taken out and the latest row
//! that passes stays, whether the table is computed from all its input or from new rows only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListBuilder, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{filter_record_batch, kernels::boolean};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::error::Result;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use medallion_pipeline::checks::failing_row;
use medallion_pipeline::spec::Action;
use medallion_proto::TaskError;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::TaskContext;
use crate::streams::{BatchStep, Stepped};

/// The quarantine table's extra columns.
pub const RUN_ID: &str = "_quarantine_run_id";
pub const FAILED_CHECKS: &str = "_failed_checks";
pub const QUARANTINED_AT: &str = "_quarantined_at";

/// What the screen took out.
#[derive(Debug, Default, Clone)]
pub(crate) struct Screened {
    /// Rows each check failed, by name.
    pub failures: HashMap<String, u64>,
    pub dropped: u64,
    pub quarantined: u64,
}

struct Check {
    name: String,
    quarantine: bool,
    failing: Arc<dyn PhysicalExpr>,
}

/// The table's screening checks, compiled against the schema of the rows written.
pub(crate) struct Screen {
    checks: Vec<Check>,
    screened: Arc<Mutex<Screened>>,
    /// Where quarantined rows go, with their schema, the run id and the time to stamp.
    quarantine: Option<(UnboundedSender<Result<RecordBatch>>, SchemaRef, String, i64)>,
}

impl Screen {
    /// The table's `drop`/`quarantine` checks over rows of `schema`; `None` when it has none.
    pub(crate) fn new(
        checks: &[medallion_pipeline::spec::CheckSpec],
        schema: &SchemaRef,
        table: &medallion_pipeline::TableRef,
    ) -> Result<Option<Self>, TaskError> {
        let session = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())
            .map_err(|e| TaskError::permanent(e.to_string()))?;
        // Functions such as coalesce exist only in simplified form for execution.
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(df_schema.clone()))
                .build(),
        );
        let mut compiled = Vec::new();
        for check in checks.iter().filter(|c| c.action().screens_rows()) {
            let sql = failing_row(check).ok_or_else(|| {
                TaskError::permanent(format!("check '{}' cannot drop rows", check.name.value))
            })?;
            let error = |e: datafusion::error::DataFusionError| {
                TaskError::permanent(format!("{table}: check '{}': {e}", check.name.value))
            };
            let expr = session.parse_sql_expr(&sql, &df_schema).map_err(error)?;
            let expr = simplifier
                .coerce(expr, &df_schema)
                .and_then(|e| simplifier.simplify(e))
                .map_err(error)?;
            let failing = session
                .create_physical_expr(expr, &df_schema)
                .map_err(error)?;
            compiled.push(Check {
                name: check.name.value.clone(),
                quarantine: check.action() == Action::Quarantine,
                failing,
            });
        }
        Ok((!compiled.is_empty()).then(|| Self {
            checks: compiled,
            screened: Arc::default(),
            quarantine: None,
        }))
    }

    /// Sends quarantined rows to `sender`, stamped with `run_id` and `at` (µs since epoch).
    pub(crate) fn quarantine_to(
        &mut self,
        sender: UnboundedSender<Result<RecordBatch>>,
        run_id: &str,
        at: i64,
        schema: &SchemaRef,
    ) {
        self.quarantine = Some((sender, quarantine_schema(schema), run_id.to_string(), at));
    }

    /// The counts so far; final once the rows have all gone through.
    pub(crate) fn screened(&self) -> Arc<Mutex<Screened>> {
        self.screened.clone()
    }

    /// The rows of `batch` that pass every check; the others are counted, and those failing
    /// a quarantine check sent to the quarantine writer.
    pub(crate) fn keep(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut failing: Vec<BooleanArray> = Vec::with_capacity(self.checks.len());
        for check in &self.checks {
            let value = check.failing.evaluate(&batch)?.into_array(rows)?;
            // NULL (a comparison with NULL) does not fail a row.
            let value = value.as_boolean();
            failing.push(if value.null_count() == 0 {
                value.clone()
            } else {
                datafusion::arrow::compute::prep_null_mask_filter(value)
            });
        }
        let any = |quarantine_only: bool| -> Result<BooleanArray> {
            let mut out = BooleanArray::from(vec![false; rows]);
            for (check, f) in self.checks.iter().zip(&failing) {
                if !quarantine_only || check.quarantine {
                    out = boolean::or(&out, f)?;
                }
            }
            Ok(out)
        };
        let removed = any(false)?;
        let quarantined = any(true)?;
        {
            let mut screened = self.screened.lock().expect("screen counts");
            for (check, f) in self.checks.iter().zip(&failing) {
                *screened.failures.entry(check.name.clone()).or_default() += f.true_count() as u64;
            }
            screened.quarantined += quarantined.true_count() as u64;
            screened.dropped += (removed.true_count() - quarantined.true_count()) as u64;
        }
        if let Some((sender, schema, run_id, at)) = &self.quarantine
            && quarantined.true_count() > 0
        {
            let rows = filter_record_batch(&batch, &quarantined)?;
            let names = self.failed_names(&failing, &quarantined);
            let n = rows.num_rows();
            let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
            columns.push(Arc::new(StringArray::from(vec![run_id.as_str(); n])));
            columns.push(Arc::new(names));
            columns.push(Arc::new(
                TimestampMicrosecondArray::from(vec![*at; n]).with_timezone("UTC"),
            ));
            // The writer gone means the task is failing already; its error is reported.
            let _ = sender.send(RecordBatch::try_new(schema.clone(), columns).map_err(Into::into));
        }
        filter_record_batch(&batch, &boolean::not(&removed)?).map_err(Into::into)
    }

    /// For each quarantined row, the names of the checks it failed.
    fn failed_names(
        &self,
        failing: &[BooleanArray],
        quarantined: &BooleanArray,
    ) -> datafusion::arrow::array::ListArray {
        let mut names = ListBuilder::new(StringBuilder::new());
        for row in (0..quarantined.len()).filter(|r| quarantined.value(*r)) {
            for (check, f) in self.checks.iter().zip(failing) {
                if f.value(row) {
                    names.values().append_value(&check.name);
                }
            }
            names.append(true);
        }
        names.finish()
    }
}

/// One task's screening: the table's checks, where the rows they quarantine go, and what they
/// took out.
pub(crate) struct Screening {
    /// The rows' Delta-compatible schema; rows are cast to it before they are checked.
    pub schema: SchemaRef,
    /// Moved into the stream by [`Screening::apply`].
    screen: Option<Screen>,
    screened: Option<Arc<Mutex<Screened>>>,
    /// Quarantined rows, when the table has a quarantine table.
    pub quarantined: Option<UnboundedReceiver<Result<RecordBatch>>>,
}

impl Screening {
    /// The screening of the task's table, over rows of `schema`.
    pub(crate) fn new(ctx: &TaskContext, schema: &SchemaRef) -> Result<Self, TaskError> {
        let schema = medallion_lake::delta_schema(schema);
        let mut screen = Screen::new(ctx.pipeline.checks(&ctx.table), &schema, &ctx.table)?;
        let quarantined = match screen.as_mut().filter(|_| !ctx.quarantine_uri.is_empty()) {
            Some(screen) => {
                let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
                let now = chrono::Utc::now().timestamp_micros();
                screen.quarantine_to(sender, &ctx.run_id, now, &schema);
                Some(receiver)
            }
            None => None,
        };
        Ok(Self {
            schema,
            screened: screen.as_ref().map(Screen::screened),
            screen,
            quarantined,
        })
    }

    /// `rows` cast to [`Screening::schema`], less the rows the checks take out.
    pub(crate) fn apply(
        &mut self,
        rows: datafusion::execution::SendableRecordBatchStream,
    ) -> datafusion::execution::SendableRecordBatchStream {
        let step = Screener {
            screen: self.screen.take(),
            schema: self.schema.clone(),
        };
        Box::pin(Stepped::new(rows, step))
    }

    /// What the checks took out; final once the rows have all gone through.
    pub(crate) fn counts(&self) -> Screened {
        self.screened
            .as_ref()
            .map(|s| s.lock().expect("screen counts").clone())
            .unwrap_or_default()
    }
}

/// Casts each batch to the table's schema and screens it.
struct Screener {
    screen: Option<Screen>,
    schema: SchemaRef,
}

impl BatchStep for Screener {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn step(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let batch = medallion_lake::cast_batch(&batch, &self.schema)
            .map_err(|e| datafusion::error::DataFusionError::External(e.into()))?;
        match &self.screen {
            Some(screen) => screen.keep(batch),
            None => Ok(batch),
        }
    }
}

/// The table's columns, then the run id, the failed checks and the time.
pub(crate) fn quarantine_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(RUN_ID, DataType::Utf8, false));
    fields.push(Field::new(
        FAILED_CHECKS,
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        false,
    ));
    fields.push(Field::new(
        QUARANTINED_AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    ));
    Arc::new(Schema::new(fields))
}
