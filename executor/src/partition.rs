//! Splitting rows into key-hash partitions, the same way on every executor.

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;
use twox_hash::XxHash64;

/// `medallion_key_partition(key, ...)`: the partition (0..partitions) a key belongs to.
///
/// Hashes the row encoding of the key columns with a fixed-seed xxHash64, so the result does
/// not depend on the process or the batch a row arrives in.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KeyPartition {
    partitions: u32,
    signature: Signature,
}

impl KeyPartition {
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions: partitions.max(1),
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for KeyPartition {
    fn name(&self) -> &str {
        "medallion_key_partition"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays: Vec<ArrayRef> = ColumnarValue::values_to_arrays(&args.args)?;
        let fields = arrays
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect();
        let rows = RowConverter::new(fields)?.convert_columns(&arrays)?;
        let n = u64::from(self.partitions);
        let out: UInt32Array = (0..rows.num_rows())
            .map(|i| (XxHash64::oneshot(0, rows.row(i).as_ref()) % n) as u32)
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
