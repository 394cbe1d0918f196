//! TPC-H raw data (the `tpchgen` crates, the same rows as the reference `dbgen`) as Parquet.
//!
//! Each table goes to `<dir>/<table>/part-<n>.parquet`; the large tables are split into
//! `files` parts so bronze ingests them in parallel tasks. The same scale factor and file count
//! always give the same rows.

use std::fs::{self, File};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// The eight TPC-H tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpchTable {
    Region,
    Nation,
    Supplier,
    Customer,
    Part,
    PartSupp,
    Orders,
    LineItem,
}

impl TpchTable {
    pub const ALL: [TpchTable; 8] = [
        TpchTable::Region,
        TpchTable::Nation,
        TpchTable::Supplier,
        TpchTable::Customer,
        TpchTable::Part,
        TpchTable::PartSupp,
        TpchTable::Orders,
        TpchTable::LineItem,
    ];

    /// The table's name in TPC-H, which is also its directory.
    pub fn name(self) -> &'static str {
        match self {
            TpchTable::Region => "region",
            TpchTable::Nation => "nation",
            TpchTable::Supplier => "supplier",
            TpchTable::Customer => "customer",
            TpchTable::Part => "part",
            TpchTable::PartSupp => "partsupp",
            TpchTable::Orders => "orders",
            TpchTable::LineItem => "lineitem",
        }
    }

    /// Small tables stay in one file whatever the requested count.
    fn parts(self, files: usize) -> usize {
        match self {
            TpchTable::Region | TpchTable::Nation | TpchTable::Supplier => 1,
            _ => files,
        }
    }

    fn reader(self, scale: f64, part: i32, parts: i32) -> Box<dyn RecordBatchReader + Send> {
        match self {
            TpchTable::Region => {
                Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts)))
            }
            TpchTable::Nation => {
                Box::new(NationArrow::new(NationGenerator::new(scale, part, parts)))
            }
            TpchTable::Supplier => Box::new(SupplierArrow::new(SupplierGenerator::new(
                scale, part, parts,
            ))),
            TpchTable::Customer => Box::new(CustomerArrow::new(CustomerGenerator::new(
                scale, part, parts,
            ))),
            TpchTable::Part => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
            TpchTable::PartSupp => Box::new(PartSuppArrow::new(PartSuppGenerator::new(
                scale, part, parts,
            ))),
            TpchTable::Orders => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
            TpchTable::LineItem => Box::new(LineItemArrow::new(LineItemGenerator::new(
                scale, part, parts,
            ))),
        }
    }
}

/// Scale and layout of a generated TPC-H data set.
#[derive(Debug, Clone)]
pub struct TpchData {
    /// TPC-H scale factor: 1 is 6M line items (about 1 GB as text).
    pub scale: f64,
    /// Files per large table.
    pub files: usize,
    /// Threads generating files at the same time.
    pub threads: usize,
}

impl TpchData {
    /// Writes every table under `dir`; returns the rows written per table.
    pub fn write(&self, dir: &Path) -> Result<Vec<(TpchTable, usize)>> {
        let jobs: Vec<(TpchTable, usize)> = TpchTable::ALL
            .iter()
            .flat_map(|&t| (1..=t.parts(self.files)).map(move |p| (t, p)))
            .collect();
        for table in TpchTable::ALL {
            fs::create_dir_all(dir.join(table.name()))?;
        }
        let queue = Mutex::new(jobs.into_iter());
        let rows = Mutex::new(Vec::new());
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = (0..self.threads.max(1))
                .map(|_| {
                    scope.spawn(|| -> Result<()> {
                        loop {
                            let Some((table, part)) = queue.lock().expect("job queue").next()
                            else {
                                return Ok(());
                            };
                            let n = self.write_part(dir, table, part)?;
                            rows.lock().expect("row counts").push((table, n));
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().expect("generator thread panicked")?;
            }
            Ok(())
        })?;
        let rows = rows.into_inner().expect("row counts");
        Ok(TpchTable::ALL
            .iter()
            .map(|&t| {
                (
                    t,
                    rows.iter().filter(|(r, _)| *r == t).map(|(_, n)| n).sum(),
                )
            })
            .collect())
    }

    fn write_part(&self, dir: &Path, table: TpchTable, part: usize) -> Result<usize> {
        let parts = table.parts(self.files);
        let path = dir.join(table.name()).join(format!("part-{part}.parquet"));
        let reader = table.reader(self.scale, part as i32, parts as i32);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let schema = plain_strings(&reader.schema());
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props))?;
        let mut rows = 0;
        for batch in reader {
            let batch = batch?;
            rows += batch.num_rows();
            let columns = batch
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| cast(c, f.data_type()))
                .collect::<Result<Vec<_>, _>>()?;
            writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
        }
        writer
            .close()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(rows)
    }
}

/// The generator's string views as plain strings, the type every source system writes.
fn plain_strings(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8View => f.as_ref().clone().with_data_type(DataType::Utf8),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}
