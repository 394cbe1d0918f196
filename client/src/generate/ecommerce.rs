//! A deterministic generator for the e-commerce example, dirty on purpose.
//!
//! Orders come as JSON lines (as from an API), customers as CSV (a CRM export), products as
//! Parquet (a catalog dump). The same seed and sizes always give the same bytes. The dirt,
//! at fixed rates: orders repeated in a later file with a newer status and `updated_at`,
//! null order ids, amounts of zero or below, emails with spaces and capitals, null statuses,
//! and a few malformed JSON lines.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use chrono::{Duration, NaiveDate};
use parquet::arrow::ArrowWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// Sizes and seed of a generated data set.
#[derive(Debug, Clone)]
pub struct EcommerceData {
    pub orders: usize,
    pub order_files: usize,
    pub seed: u64,
}

/// What was generated, for the caller to report.
#[derive(Debug, Default)]
pub struct Generated {
    pub order_lines: usize,
    pub customers: usize,
    pub products: usize,
}

const SEGMENTS: [&str; 3] = ["Consumer", "Corporate", "Home Office"];
const REGIONS: [&str; 4] = ["North", "South", "East", "West"];
const CATEGORIES: [&str; 5] = ["Books", "Electronics", "Garden", "Kitchen", "Toys"];
const STATUSES: [&str; 4] = ["placed", "paid", "shipped", "delivered"];
/// Two years of orders.
const ORDER_WINDOW_MINUTES: u64 = 2 * 365 * 24 * 60;

impl EcommerceData {
    pub fn customers(&self) -> usize {
        (self.orders / 20).max(10)
    }

    pub fn products(&self) -> usize {
        (self.orders / 200).clamp(10, 5000)
    }

    /// Writes `orders/`, `customers/` and `products/` under `dir`.
    pub fn write(&self, dir: &Path) -> Result<Generated> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut out = Generated {
            customers: self.customers(),
            products: self.products(),
            ..Default::default()
        };
        self.write_customers(&dir.join("customers"), &mut rng)?;
        self.write_products(&dir.join("products"), &mut rng)?;
        out.order_lines = self.write_orders(&dir.join("orders"), &mut rng)?;
        Ok(out)
    }

    fn write_customers(&self, dir: &Path, rng: &mut ChaCha8Rng) -> Result<()> {
        fs::create_dir_all(dir)?;
        let path = dir.join("customers.csv");
        let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&path)?));
        w.write_record([
            "customer_id",
            "customer_name",
            "email",
            "customer_segment",
            "region",
            "signup_date",
        ])?;
        let epoch = NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid date");
        for id in 1..=self.customers() {
            let signup = epoch + Duration::days(rng.random_range(0..1400));
            w.write_record([
                id.to_string(),
                format!("Customer {id}"),
                messy_email(rng, id),
                SEGMENTS[rng.random_range(0..SEGMENTS.len())].to_string(),
                REGIONS[rng.random_range(0..REGIONS.len())].to_string(),
                signup.to_string(),
            ])?;
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))
    }

    fn write_products(&self, dir: &Path, rng: &mut ChaCha8Rng) -> Result<()> {
        fs::create_dir_all(dir)?;
        let n = self.products();
        let ids: Vec<i64> = (1..=n as i64).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("Product {i}")).collect();
        let categories: Vec<&str> = ids
            .iter()
            .map(|_| CATEGORIES[rng.random_range(0..CATEGORIES.len())])
            .collect();
        let prices: Vec<f64> = ids
            .iter()
            .map(|_| f64::from(rng.random_range(199..=49_999)) / 100.0)
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("product_id", Arc::new(Int64Array::from(ids)) as ArrayRef),
            (
                "product_name",
                Arc::new(StringArray::from(names)) as ArrayRef,
            ),
            (
                "category",
                Arc::new(StringArray::from(categories)) as ArrayRef,
            ),
            (
                "unit_price",
                Arc::new(Float64Array::from(prices)) as ArrayRef,
            ),
        ])?;
        let file = File::create(dir.join("products.parquet"))?;
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None)?;
        writer.write(&batch)?;
        writer.close()?;
        Ok(())
    }

    fn write_orders(&self, dir: &Path, rng: &mut ChaCha8Rng) -> Result<usize> {
        fs::create_dir_all(dir)?;
        let files = self.order_files.max(1);
        let per_file = self.orders.div_ceil(files);
        let start = NaiveDate::from_ymd_opt(2024, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("valid time");
        let mut lines = 0;
        let mut next_id = 1usize;
        // Orders of the previous file, some of which come again with a newer status.
        let mut previous: Vec<serde_json::Value> = Vec::new();
        for f in 1..=files {
            let path = dir.join(format!("orders_{f:04}.jsonl"));
            let mut w = BufWriter::new(File::create(&path)?);
            let mut current = Vec::new();
            for _ in 0..per_file.min(self.orders + 1 - next_id) {
                let id = next_id;
                next_id += 1;
                // Orders spread over two years, however many there are.
                let minute = (id as u64 * ORDER_WINDOW_MINUTES / self.orders.max(1) as u64) as i64;
                let created = start + Duration::minutes(minute + rng.random_range(0..5));
                let quantity = rng.random_range(1..=5);
                let unit = f64::from(rng.random_range(199..=49_999)) / 100.0;
                let roll = rng.random_range(0..1000);
                let amount = match roll {
                    0..=4 => 0.0,
                    5..=9 => -unit,
                    _ => (unit * f64::from(quantity) * 100.0).round() / 100.0,
                };
                let mut order = json!({
                    "order_id": if (10..15).contains(&roll) { serde_json::Value::Null } else { json!(id) },
                    "customer_id": rng.random_range(1..=self.customers()),
                    "product_id": rng.random_range(1..=self.products()),
                    "quantity": quantity,
                    "amount": amount,
                    "status": if (15..45).contains(&roll) { serde_json::Value::Null } else { json!(STATUSES[rng.random_range(0..2)]) },
                    "email": messy_email(rng, id),
                    "created_at": created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "updated_at": created.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                });
                if (45..47).contains(&roll) {
                    // A line cut short, as when an API export is interrupted.
                    let text = order.to_string();
                    writeln!(w, "{}", &text[..text.len() / 2])?;
                } else {
                    writeln!(w, "{order}")?;
                    if roll >= 980 {
                        order["order_id"] = json!(id);
                        current.push(order);
                    }
                }
                lines += 1;
            }
            for mut order in previous.drain(..) {
                let updated = chrono::NaiveDateTime::parse_from_str(
                    order["updated_at"].as_str().unwrap_or_default(),
                    "%Y-%m-%dT%H:%M:%SZ",
                )? + Duration::days(2);
                order["status"] = json!(STATUSES[rng.random_range(2..4)]);
                order["updated_at"] = json!(updated.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                writeln!(w, "{order}")?;
                lines += 1;
            }
            previous = current;
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(lines)
    }
}

/// An email, with a tenth of them padded with spaces and in capitals.
fn messy_email(rng: &mut ChaCha8Rng, id: usize) -> String {
    let clean = format!("user{id}@example.com");
    if rng.random_range(0..10) == 0 {
        format!("  {}  ", clean.to_uppercase())
    } else {
        clean
    }
}
