//! PostgreSQL as a source: a table or a query read in parallel ranges straight into Arrow.
//!
//! The coordinator [plans](Postgres::plan) a run's read: the rows past the cursor its table's
//! last commit recorded, up to the largest cursor now, split into ranges of a partition column;
//! each range is one task's `SELECT`. An executor [reads](Postgres::read) one with a binary
//! `COPY`, so rows arrive in PostgreSQL's own binary encoding and are decoded into Arrow arrays
//! without a text round trip.
//!
//! ```no_run
//! # async fn example(pg: &medallion_pipeline::spec::PostgresSource) -> Result<(), Box<dyn std::error::Error>> {
//! use medallion_sources::postgres::{Connection, Postgres};
//! # let pipeline: medallion_pipeline::Pipeline = todo!();
//! let connection = Connection::resolve(&pipeline, pg)?;
//! let source = Postgres::connect(pg, "orders_db", &connection).await?;
//! // Everything up to the largest cursor now; the next run passes `plan.cursor`.
//! let plan = source.plan(None).await?;
//! let (source, schema) = (&source, &plan.schema);
//! for slice in &plan.slices {
//!     let (tx, mut rx) = tokio::sync::mpsc::channel(4);
//!     // The sender goes with the read, so the receiver ends when the read does.
//!     let read = async move { source.read(&slice.sql, schema, &tx).await };
//!     let (rows, _) = tokio::join!(read, async move {
//!         while let Some(batch) = rx.recv().await { println!("{} rows", batch.num_rows()); }
//!     });
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Decimal128Type, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use futures::{StreamExt, pin_mut};
use medallion_pipeline::Pipeline;
use medallion_pipeline::spec::PostgresSource;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Row};

use crate::BATCH_ROWS;

/// A PostgreSQL source could not be planned or read.
#[derive(Debug, thiserror::Error)]
#[error("postgres source '{source_name}': {message}")]
pub struct PgError {
    pub source_name: String,
    pub message: String,
}

/// Where and as whom to connect, with the password read from the environment or a file.
pub struct Connection {
    config: tokio_postgres::Config,
}

impl Connection {
    /// Reads the URL and the password the spec points at (a relative `password_file` is
    /// relative to the spec's directory).
    pub fn resolve(pipeline: &Pipeline, pg: &PostgresSource) -> Result<Self, String> {
        let url = match pg.url.value.strip_prefix("env:") {
            Some(var) => std::env::var(var)
                .map_err(|_| format!("the environment variable {var} (url) is not set"))?,
            None => pg.url.value.clone(),
        };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            match pg.url.value.strip_prefix("env:") {
                // A URL from the environment may hold a password: nothing of it is echoed.
                Some(var) => format!("the URL in {var} is not a PostgreSQL URL"),
                None => format!("url: {e}"),
            }
        })?;
        let password = crate::read_secret(
            pipeline,
            "password",
            pg.password_env.as_ref().map(|v| v.value.as_str()),
            pg.password_file.as_ref().map(|f| f.value.as_str()),
        )?;
        if let Some(password) = password {
            config.password(password);
        }
        config.application_name("medallion");
        config.connect_timeout(std::time::Duration::from_secs(30));
        Ok(Self { config })
    }
}

/// A value of a cursor or partition column: integers, dates and timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Key {
    Int(i64),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
    Timestamptz(DateTime<Utc>),
}

impl Key {
    /// The value as an SQL literal of its type.
    pub fn literal(&self) -> String {
        match self {
            Key::Int(v) => v.to_string(),
            Key::Date(d) => format!("DATE '{}'", d.format("%Y-%m-%d")),
            Key::Timestamp(t) => format!("TIMESTAMP '{}'", t.format("%Y-%m-%d %H:%M:%S%.6f")),
            Key::Timestamptz(t) => {
                format!("TIMESTAMPTZ '{}+00'", t.format("%Y-%m-%d %H:%M:%S%.6f"))
            }
        }
    }

    /// A number the ranges are split on (microseconds for times, days for dates).
    fn ordinal(&self) -> i64 {
        match self {
            Key::Int(v) => *v,
            Key::Date(d) => d
                .signed_duration_since(DateTime::UNIX_EPOCH.date_naive())
                .num_days(),
            Key::Timestamp(t) => t.and_utc().timestamp_micros(),
            Key::Timestamptz(t) => t.timestamp_micros(),
        }
    }

    /// The key of the same type at `ordinal`.
    fn at(&self, ordinal: i64) -> Key {
        match self {
            Key::Int(_) => Key::Int(ordinal),
            Key::Date(_) => {
                Key::Date(DateTime::UNIX_EPOCH.date_naive() + chrono::Duration::days(ordinal))
            }
            Key::Timestamp(_) => Key::Timestamp(
                DateTime::from_timestamp_micros(ordinal)
                    .unwrap_or_default()
                    .naive_utc(),
            ),
            Key::Timestamptz(_) => {
                Key::Timestamptz(DateTime::from_timestamp_micros(ordinal).unwrap_or_default())
            }
        }
    }

    /// Column `i` of `row` as a key, if its type can be one.
    fn from_row(row: &Row, i: usize) -> Result<Option<Key>, String> {
        let ty = row.columns()[i].type_().clone();
        let key = match ty {
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Key::Int(v.into()))),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Key::Int(v.into()))),
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Key::Int)),
            Type::DATE => row
                .try_get::<_, Option<NaiveDate>>(i)
                .map(|v| v.map(Key::Date)),
            Type::TIMESTAMP => row
                .try_get::<_, Option<NaiveDateTime>>(i)
                .map(|v| v.map(Key::Timestamp)),
            Type::TIMESTAMPTZ => row
                .try_get::<_, Option<DateTime<Utc>>>(i)
                .map(|v| v.map(Key::Timestamptz)),
            other => {
                return Err(format!(
                    "column '{}' is {other}; it must be an integer, date or timestamp",
                    row.columns()[i].name()
                ));
            }
        };
        key.map_err(|e| e.to_string())
    }
}

/// What one run reads: its slices, and the cursor the run reads up to (recorded with the
/// commit; `None` without a cursor column).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadPlan {
    pub slices: Vec<Slice>,
    pub cursor: Option<Key>,
    /// The Arrow columns rows are read into (bronze's data columns).
    pub schema: SchemaRef,
}

/// One task's share of a run's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// The `SELECT` of its rows.
    pub sql: String,
    /// Which rows, for people (`order_id >= 250001 AND order_id < 500001`).
    pub describe: String,
}

/// A connected PostgreSQL source.
pub struct Postgres<'a> {
    spec: &'a PostgresSource,
    name: String,
    client: Client,
}

impl<'a> Postgres<'a> {
    pub async fn connect(
        spec: &'a PostgresSource,
        name: &str,
        connection: &Connection,
    ) -> Result<Self, PgError> {
        let (client, conn) = connection
            .config
            .connect(NoTls)
            .await
            .map_err(|e| error(name, format!("cannot connect: {e}")))?;
        tokio::spawn(async move {
            // Its end is also the error of the query waiting on it.
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(Self {
            spec,
            name: name.to_string(),
            client,
        })
    }

    fn error(&self, message: impl std::fmt::Display) -> PgError {
        error(&self.name, message)
    }

    /// The table or query as a relation of a `FROM`.
    fn relation(&self) -> String {
        match (&self.spec.table, &self.spec.query) {
            (Some(t), _) => t.value.split('.').map(quote).collect::<Vec<_>>().join("."),
            (None, Some(q)) => format!("({}) AS medallion_source", q.value),
            (None, None) => String::new(),
        }
    }

    /// The source's columns and how each is read into Arrow.
    async fn columns(&self) -> Result<Vec<Column>, PgError> {
        let probe = format!("SELECT * FROM {} LIMIT 0", self.relation());
        let statement = self
            .client
            .prepare(&probe)
            .await
            .map_err(|e| self.error(db_error(&e)))?;
        Ok(statement.columns().iter().map(Column::new).collect())
    }

    /// Plans a run that reads the rows whose cursor is past `after` (all rows for `None`).
    pub async fn plan(&self, after: Option<&Key>) -> Result<ReadPlan, PgError> {
        let relation = self.relation();
        let columns = self.columns().await?;
        let schema: SchemaRef = Arc::new(Schema::new(
            columns.iter().map(Column::field).collect::<Vec<_>>(),
        ));
        let (mut filter, cursor) = match &self.spec.cursor {
            Some(c) => {
                let c = quote(&c.value);
                let past = after.map(|k| format!(" WHERE {c} > {}", k.literal()));
                let sql = format!(
                    "SELECT max({c}) FROM {relation}{}",
                    past.unwrap_or_default()
                );
                let Some(upto) = self.key(&sql).await? else {
                    return Ok(ReadPlan {
                        slices: Vec::new(),
                        cursor: after.cloned(),
                        schema,
                    });
                };
                let mut filter = vec![format!("{c} <= {}", upto.literal())];
                if let Some(k) = after {
                    filter.insert(0, format!("{c} > {}", k.literal()));
                }
                (filter, Some(upto))
            }
            None => (Vec::new(), None),
        };
        let ranges = match &self.spec.partition_by {
            Some(p) => self.ranges(&p.value, &relation, &filter).await?,
            None => vec![None],
        };
        let list: Vec<String> = columns.iter().map(Column::select).collect();
        let slices = ranges
            .into_iter()
            .map(|range| {
                if let Some(r) = &range {
                    filter.push(r.clone());
                }
                let condition = match filter.is_empty() {
                    true => String::new(),
                    false => format!(" WHERE {}", filter.join(" AND ")),
                };
                if range.is_some() {
                    filter.pop();
                }
                Slice {
                    sql: format!("SELECT {} FROM {relation}{condition}", list.join(", ")),
                    describe: range.unwrap_or_else(|| "all rows".into()),
                }
            })
            .collect();
        Ok(ReadPlan {
            slices,
            cursor,
            schema,
        })
    }

    /// Conditions splitting the rows into `partitions` ranges of equal width of `column`; the
    /// first also takes its NULLs, the outer ones are open so no row falls outside.
    async fn ranges(
        &self,
        column: &str,
        relation: &str,
        filter: &[String],
    ) -> Result<Vec<Option<String>>, PgError> {
        let p = quote(column);
        let condition = match filter.is_empty() {
            true => String::new(),
            false => format!(" WHERE {}", filter.join(" AND ")),
        };
        let sql = format!("SELECT min({p}), max({p}) FROM {relation}{condition}");
        let row = self.query_one(&sql).await?;
        let bound =
            |i| Key::from_row(&row, i).map_err(|e| self.error(format!("partition_by: {e}")));
        let (Some(low), Some(high)) = (bound(0)?, bound(1)?) else {
            return Ok(vec![None]);
        };
        let n = i128::from(self.spec.partitions().max(1));
        let (lo, hi) = (i128::from(low.ordinal()), i128::from(high.ordinal()));
        let width = (hi - lo) / n + 1;
        let cuts: Vec<Key> = (1..n)
            .map(|k| lo + k * width)
            .take_while(|&cut| cut <= hi)
            .map(|cut| low.at(cut as i64))
            .collect();
        let mut ranges = Vec::with_capacity(cuts.len() + 1);
        for (i, cut) in cuts.iter().enumerate() {
            ranges.push(Some(match i {
                0 => format!("({p} < {} OR {p} IS NULL)", cut.literal()),
                _ => format!(
                    "{p} >= {} AND {p} < {}",
                    cuts[i - 1].literal(),
                    cut.literal()
                ),
            }));
        }
        ranges.push(cuts.last().map(|c| format!("{p} >= {}", c.literal())));
        Ok(ranges)
    }

    async fn key(&self, sql: &str) -> Result<Option<Key>, PgError> {
        let row = self.query_one(sql).await?;
        Key::from_row(&row, 0).map_err(|e| self.error(format!("cursor: {e}")))
    }

    /// The one row of `sql`, run read-only ([`Postgres::read_only`]).
    async fn query_one(&self, sql: &str) -> Result<Row, PgError> {
        self.read_only().await?;
        let row = self.client.query_one(sql, &[]).await;
        self.end(row.is_ok()).await?;
        row.map_err(|e| self.error(db_error(&e)))
    }

    /// Starts a read-only transaction: whatever a source's query calls, it cannot write (a
    /// session default could be changed by the query itself; a transaction's mode cannot,
    /// once it has run a statement).
    async fn read_only(&self) -> Result<(), PgError> {
        let begin = self.client.batch_execute("START TRANSACTION READ ONLY");
        begin.await.map_err(|e| self.error(db_error(&e)))
    }

    async fn end(&self, ok: bool) -> Result<(), PgError> {
        let end = self
            .client
            .batch_execute(if ok { "COMMIT" } else { "ROLLBACK" });
        end.await.map_err(|e| self.error(db_error(&e)))
    }

    /// Reads the rows of a slice's `sql` into batches of `schema`, sent to `tx` (until its
    /// receiver is gone); the number of rows read.
    pub async fn read(
        &self,
        sql: &str,
        schema: &SchemaRef,
        tx: &mpsc::Sender<RecordBatch>,
    ) -> Result<u64, PgError> {
        let columns = self.columns().await?;
        let same = |c: &Column, f: &Field| c.name == *f.name() && c.data_type == *f.data_type();
        if columns.len() != schema.fields().len()
            || columns
                .iter()
                .zip(schema.fields())
                .any(|(c, f)| !same(c, f))
        {
            return Err(self
                .error("its columns changed since the run was planned; the next run plans again"));
        }
        self.read_only().await?;
        let read = self.copy(sql, &columns, schema, tx).await;
        match read {
            // The writer stopped mid-copy: the connection closes with the transaction open.
            Ok(None) => Ok(0),
            Ok(Some(rows)) => self.end(true).await.map(|_| rows),
            Err(e) => {
                let _ = self.end(false).await;
                Err(e)
            }
        }
    }

    /// The binary `COPY` of `sql`'s rows into batches; `None` when the receiver went away.
    async fn copy(
        &self,
        sql: &str,
        columns: &[Column],
        schema: &SchemaRef,
        tx: &mpsc::Sender<RecordBatch>,
    ) -> Result<Option<u64>, PgError> {
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let stream = self
            .client
            .copy_out(&copy)
            .await
            .map_err(|e| self.error(db_error(&e)))?;
        let types: Vec<Type> = columns.iter().map(|c| c.wire.clone()).collect();
        let rows = BinaryCopyOutStream::new(stream, &types);
        pin_mut!(rows);
        let mut builders: Vec<Box<dyn ArrayBuilder>> =
            columns.iter().map(|c| c.builder()).collect();
        let (mut pending, mut total) = (0usize, 0u64);
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| self.error(db_error(&e)))?;
            for (i, (column, builder)) in columns.iter().zip(&mut builders).enumerate() {
                column
                    .append(&row, i, builder.as_mut())
                    .map_err(|e| self.error(format!("column '{}': {e}", column.name)))?;
            }
            pending += 1;
            total += 1;
            if pending == BATCH_ROWS {
                if tx.send(finish(schema, &mut builders)?).await.is_err() {
                    // The writer stopped; its error is what the task reports.
                    return Ok(None);
                }
                pending = 0;
            }
        }
        if pending > 0 && tx.send(finish(schema, &mut builders)?).await.is_err() {
            return Ok(None);
        }
        Ok(Some(total))
    }
}

fn finish(
    schema: &SchemaRef,
    builders: &mut [Box<dyn ArrayBuilder>],
) -> Result<RecordBatch, PgError> {
    let arrays: Vec<ArrayRef> = builders.iter_mut().map(|b| b.finish()).collect();
    RecordBatch::try_new(schema.clone(), arrays).map_err(|e| error("", e))
}

fn error(name: &str, message: impl std::fmt::Display) -> PgError {
    PgError {
        source_name: name.to_string(),
        message: message.to_string(),
    }
}

/// The server's own message (with its detail), not tokio-postgres's "db error".
fn db_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}

/// An SQL identifier, quoted.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A source column: its name, the type it is read as, and its Arrow type.
struct Column {
    name: String,
    /// The type on the wire: the column's own, or `text` for types read as text.
    wire: Type,
    /// Selected as `name::text` (types without an Arrow reader of their own).
    as_text: bool,
    data_type: DataType,
}

impl Column {
    fn new(c: &tokio_postgres::Column) -> Self {
        let ty = c.type_().clone();
        let data_type = match ty {
            Type::BOOL => DataType::Boolean,
            Type::INT2 => DataType::Int16,
            Type::INT4 => DataType::Int32,
            Type::INT8 => DataType::Int64,
            Type::FLOAT4 => DataType::Float32,
            Type::FLOAT8 => DataType::Float64,
            Type::DATE => DataType::Date32,
            Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
            Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Type::NUMERIC => match numeric_precision(c.type_modifier()) {
                Some((p, s)) => DataType::Decimal128(p, s),
                None => DataType::Utf8,
            },
            _ => DataType::Utf8,
        };
        let text = matches!(ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME);
        let as_text = !text && matches!(data_type, DataType::Utf8 | DataType::Decimal128(..));
        Self {
            name: c.name().to_string(),
            wire: if as_text { Type::TEXT } else { ty },
            as_text,
            data_type,
        }
    }

    fn field(&self) -> Field {
        Field::new(&self.name, self.data_type.clone(), true)
    }

    /// The column in the `SELECT` list: as is, or cast to text.
    fn select(&self) -> String {
        let name = quote(&self.name);
        match self.as_text {
            true => format!("{name}::text AS {name}"),
            false => name,
        }
    }

    fn builder(&self) -> Box<dyn ArrayBuilder> {
        match &self.data_type {
            DataType::Boolean => Box::new(BooleanBuilder::new()),
            DataType::Int16 => Box::new(Int16Builder::new()),
            DataType::Int32 => Box::new(Int32Builder::new()),
            DataType::Int64 => Box::new(Int64Builder::new()),
            DataType::Float32 => Box::new(Float32Builder::new()),
            DataType::Float64 => Box::new(Float64Builder::new()),
            DataType::Date32 => Box::new(Date32Builder::new()),
            DataType::Timestamp(_, tz) => {
                Box::new(TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone()))
            }
            DataType::Decimal128(p, s) => Box::new(
                Decimal128Builder::new()
                    .with_precision_and_scale(*p, *s)
                    .expect("precision checked by numeric_precision"),
            ),
            _ => Box::new(StringBuilder::new()),
        }
    }

    /// Appends column `i` of `row` to `builder` (made by [`Column::builder`]).
    fn append(
        &self,
        row: &tokio_postgres::binary_copy::BinaryCopyOutRow,
        i: usize,
        builder: &mut dyn ArrayBuilder,
    ) -> Result<(), String> {
        fn cast<B: 'static>(b: &mut dyn ArrayBuilder) -> &mut B {
            b.as_any_mut()
                .downcast_mut::<B>()
                .expect("builder of the column's type")
        }
        let e = |e: tokio_postgres::Error| e.to_string();
        match &self.data_type {
            DataType::Boolean => cast::<BooleanBuilder>(builder)
                .append_option(row.try_get::<Option<bool>>(i).map_err(e)?),
            DataType::Int16 => cast::<Int16Builder>(builder)
                .append_option(row.try_get::<Option<i16>>(i).map_err(e)?),
            DataType::Int32 => cast::<Int32Builder>(builder)
                .append_option(row.try_get::<Option<i32>>(i).map_err(e)?),
            DataType::Int64 => cast::<Int64Builder>(builder)
                .append_option(row.try_get::<Option<i64>>(i).map_err(e)?),
            DataType::Float32 => cast::<Float32Builder>(builder)
                .append_option(row.try_get::<Option<f32>>(i).map_err(e)?),
            DataType::Float64 => cast::<Float64Builder>(builder)
                .append_option(row.try_get::<Option<f64>>(i).map_err(e)?),
            DataType::Date32 => {
                let days = row.try_get::<Option<NaiveDate>>(i).map_err(e)?.map(|d| {
                    d.signed_duration_since(DateTime::UNIX_EPOCH.date_naive())
                        .num_days() as i32
                });
                cast::<Date32Builder>(builder).append_option(days)
            }
            DataType::Timestamp(_, None) => {
                let t = row.try_get::<Option<NaiveDateTime>>(i).map_err(e)?;
                cast::<TimestampMicrosecondBuilder>(builder)
                    .append_option(t.map(|t| t.and_utc().timestamp_micros()))
            }
            DataType::Timestamp(_, Some(_)) => {
                let t = row.try_get::<Option<DateTime<Utc>>>(i).map_err(e)?;
                cast::<TimestampMicrosecondBuilder>(builder)
                    .append_option(t.map(|t| t.timestamp_micros()))
            }
            DataType::Decimal128(p, s) => {
                let text = row.try_get::<Option<&str>>(i).map_err(e)?;
                let value = text
                    .map(|t| {
                        arrow::compute::kernels::cast_utils::parse_decimal::<Decimal128Type>(
                            t, *p, *s,
                        )
                    })
                    .transpose()
                    .map_err(|e| e.to_string())?;
                cast::<Decimal128Builder>(builder).append_option(value)
            }
            _ => cast::<StringBuilder>(builder)
                .append_option(row.try_get::<Option<&str>>(i).map_err(e)?),
        }
        Ok(())
    }
}

/// `numeric(p, s)`'s precision and scale from its type modifier, when Arrow's Decimal128
/// holds it; unconstrained `numeric` has none (it is read as text).
fn numeric_precision(modifier: i32) -> Option<(u8, i8)> {
    // PostgreSQL stores ((precision << 16) | scale) + VARHDRSZ (4); -1 when unconstrained.
    let m = modifier.checked_sub(4).filter(|m| *m >= 0)?;
    let (p, s) = ((m >> 16) & 0xffff, m & 0xffff);
    (1..=38)
        .contains(&p)
        .then_some((p as u8, s as i8))
        .filter(|(_, s)| *s >= 0 && (*s as u8) <= 38)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_literals_of_their_type_and_split_on_their_ordinal() {
        let t = Key::Timestamptz(DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap());
        assert_eq!(t.literal(), "TIMESTAMPTZ '2023-11-14 22:13:20.123456+00'");
        assert_eq!(t.at(t.ordinal()), t);
        let d = Key::Date(NaiveDate::from_ymd_opt(2024, 3, 1).unwrap());
        assert_eq!(d.literal(), "DATE '2024-03-01'");
        assert_eq!(d.at(d.ordinal() + 1).literal(), "DATE '2024-03-02'");
        assert_eq!(Key::Int(-5).literal(), "-5");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), t);
    }

    #[test]
    fn numeric_type_modifiers_give_decimal_precision_and_scale() {
        assert_eq!(numeric_precision((12 << 16 | 2) + 4), Some((12, 2)));
        assert_eq!(numeric_precision(-1), None);
        assert_eq!(numeric_precision((60 << 16) + 4), None);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote("a\"b"), "\"a\"\"b\"");
    }
}
