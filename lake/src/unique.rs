//! A table DataFusion knows to be unique on a key.
//!
//! Medallion knows which tables no two rows of share a key (a silver table's `keys`, on which
//! it deduplicates and merges); DataFusion learns it from a table's constraints. Declared, the
//! key's functional dependencies follow the table through projections, filters and aliases, so
//! an optimizer can see that a join on the key matches each row of the other side at most once.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::{Constraint, Constraints, Statistics};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

/// A table read as it is, with a `UNIQUE` constraint on a key. DataFusion does not check
/// constraints: only a key the table's writer keeps unique may be declared.
#[derive(Debug)]
pub struct UniqueOn {
    table: Arc<dyn TableProvider>,
    constraints: Constraints,
}

impl UniqueOn {
    /// `table` declared unique on the columns `key` (an error names a column it lacks).
    pub fn table(table: Arc<dyn TableProvider>, key: &[&str]) -> Result<Arc<dyn TableProvider>> {
        let schema = table.schema();
        let indices = key
            .iter()
            .map(|c| schema.index_of(c))
            .collect::<Result<Vec<_>, _>>()?;
        let constraints = Constraints::new_unverified(vec![Constraint::Unique(indices)]);
        Ok(Arc::new(Self { table, constraints }))
    }
}

#[async_trait]
impl TableProvider for UniqueOn {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn table_type(&self) -> TableType {
        self.table.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.table.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> datafusion::error::Result<ScanResult> {
        self.table.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.table.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.table.statistics()
    }
}
