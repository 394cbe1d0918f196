//! `medallion sql`: a query's rows, streamed to standard output as an aligned table, JSON,
//! CSV or Parquet.

use std::io::Write;

use anyhow::{Result, bail};
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::execution::SendableRecordBatchStream;
use futures::TryStreamExt;
use medallion_coordinator::snapshots;
use medallion_pipeline::Pipeline;

/// How query results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table, for people (the whole result is held to align it).
    Table,
    /// A JSON array of objects.
    Json,
    /// CSV with a header line.
    Csv,
    /// A Parquet file (redirect standard output to a file).
    Parquet,
}

/// Runs `query` over the lake of `pipeline` (at the versions run `snapshot` left, when given)
/// and writes its rows to `out`.
pub async fn run(
    pipeline: &Pipeline,
    query: &str,
    snapshot: Option<&str>,
    format: Format,
    out: impl Write + Send,
) -> Result<()> {
    let snapshot = match snapshot {
        Some(run) => Some(snapshots::of_run(pipeline, run).await?),
        None => None,
    };
    let query = medallion_coordinator::sql::query(pipeline, query, snapshot.as_ref()).await?;
    write(query.frame.execute_stream().await?, format, out).await
}

/// Writes a stream of rows in `format`, batch by batch (but for `Table`).
pub async fn write(
    mut rows: SendableRecordBatchStream,
    format: Format,
    mut out: impl Write + Send,
) -> Result<()> {
    match format {
        Format::Table => {
            let batches: Vec<RecordBatch> = rows.try_collect().await?;
            writeln!(out, "{}", pretty_format_batches(&batches)?)?;
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut out);
            while let Some(batch) = rows.try_next().await? {
                writer.write(&batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::Writer::new(&mut out);
            while let Some(batch) = rows.try_next().await? {
                writer.write(&batch)?;
            }
        }
        Format::Parquet => {
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, rows.schema(), None)?;
            while let Some(batch) = rows.try_next().await? {
                writer.write(&batch)?;
            }
            writer.close()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Refuses to write Parquet to a terminal.
pub fn check_destination(format: Format) -> Result<()> {
    use std::io::IsTerminal;
    if format == Format::Parquet && std::io::stdout().is_terminal() {
        bail!("--output parquet writes a file: redirect standard output (> result.parquet)");
    }
    Ok(())
}
