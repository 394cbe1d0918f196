//! Raw data for the examples and the benchmarks, written as a source system would.

mod ecommerce;
mod tpch;

pub use ecommerce::{EcommerceData, Generated};
pub use tpch::{TpchData, TpchTable};
