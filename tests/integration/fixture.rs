//! A small shop whose every gold value can be checked by hand.

use medallion_tests::Workspace;

pub const SPEC: &str = r#"
pipeline: shop
lake: lake
sources:
  - name: api
    format: json
    path: data/orders/*.jsonl
  - name: crm
    format: csv
    path: data/customers.csv
  - name: catalog
    format: csv
    path: data/products.csv
    options: { header: true, delimiter: ";" }
bronze:
  - { name: orders, source: api, files_per_task: 1 }
  - { name: customers, source: crm }
  - { name: products, source: catalog }
silver:
  - name: orders
    from: bronze.orders
    keys: [order_id]
    latest_by: to_timestamp(updated_at)
    mode: merge
    partitions: 2
    columns:
      - { name: order_id, type: bigint }
      - { name: customer_id, type: bigint }
      - { name: product_id, type: bigint }
      - { name: quantity, type: int }
      - { name: amount, type: "decimal(10,2)" }
      - { name: status, expr: "coalesce(status, 'unknown')" }
      - { name: email, expr: lower(trim(email)) }
      - { name: order_date, expr: "CAST(to_timestamp(created_at) AS DATE)", type: date }
    filters: ["order_id IS NOT NULL", "amount > 0"]
    checks:
      - { name: id_unique, check: unique, column: order_id, severity: critical }
  - name: customers
    from: bronze.customers
    keys: [customer_id]
    columns:
      - { name: customer_id, type: bigint }
      - { name: customer_name }
      - { name: customer_segment }
      - { name: region }
  - name: products
    from: bronze.products
    keys: [product_id]
    columns:
      - { name: product_id, type: bigint }
      - { name: product_name }
      - { name: category }
gold:
  - name: customer_360
    sql: |
      SELECT c.customer_id, c.customer_name, c.customer_segment, c.region,
             count(o.order_id) AS total_orders, sum(o.amount) AS lifetime_value,
             avg(o.amount) AS avg_order_value, max(o.order_date) AS last_order_date,
             min(o.order_date) AS first_order_date,
             CAST(max(o.order_date) - min(o.order_date) AS BIGINT) AS customer_tenure_days
      FROM silver.orders o JOIN silver.customers c ON o.customer_id = c.customer_id
      GROUP BY c.customer_id, c.customer_name, c.customer_segment, c.region
  - name: product_performance
    sql: |
      SELECT p.product_id, p.product_name, p.category, sum(o.quantity) AS units_sold,
             sum(o.amount) AS revenue, count(DISTINCT o.customer_id) AS unique_customers
      FROM silver.orders o JOIN silver.products p ON o.product_id = p.product_id
      GROUP BY p.product_id, p.product_name, p.category
"#;

/// First batch: 6 lines, one malformed, one null id, one zero amount, order 4 placed.
pub const ORDERS_1: &str = r#"{"order_id": 1, "customer_id": 10, "product_id": 100, "quantity": 2, "amount": "20.00", "status": "paid", "email": "  ANN@X.COM ", "created_at": "2024-01-01T10:00:00Z", "updated_at": "2024-01-01T10:00:00Z"}
{"order_id": 2, "customer_id": 10, "product_id": 101, "quantity": 1, "amount": 5.5, "status": null, "email": "ann@x.com", "created_at": "2024-01-03T10:00:00Z", "updated_at": "2024-01-03T10:00:00Z"}
{"order_id": null, "customer_id": 11, "product_id": 100, "quantity": 1, "amount": 9, "status": "paid", "email": "bob@y.com", "created_at": "2024-01-02T10:00:00Z", "updated_at": "2024-01-02T10:00:00Z"}
{"order_id": 3, "customer_id": 11, "product_id": 100, "quantity": 1, "amount": 0, "status": "paid", "email": "bob@y.com", "created_at": "2024-01-02T11:00:00Z", "updated_at": "2024-01-02T11:00:00Z"}
{"order_id": 4, "customer_id": 11, "product_id": 100, "quantity": 3, "amount": 30, "status": "placed", "email": "Bob@Y.com", "created_at": "2024-01-05T10:00:00Z", "updated_at": "2024-01-05T10:00:00Z"}
{"order_id": 5, "customer_id": 11, "product_id"
"#;

/// Second file of the same batch: order 4 shipped (newer), order 1 placed (older, loses).
pub const ORDERS_2: &str = r#"{"order_id": 4, "customer_id": 11, "product_id": 100, "quantity": 3, "amount": 30, "status": "shipped", "email": "bob@y.com", "created_at": "2024-01-05T10:00:00Z", "updated_at": "2024-01-07T00:00:00Z"}
{"order_id": 1, "customer_id": 10, "product_id": 100, "quantity": 2, "amount": 20, "status": "placed", "email": "ann@x.com", "created_at": "2024-01-01T10:00:00Z", "updated_at": "2023-12-31T00:00:00Z"}
"#;

/// A later batch: order 2 delivered with a new amount, order 6 new.
pub const ORDERS_3: &str = r#"{"order_id": 2, "customer_id": 10, "product_id": 101, "quantity": 1, "amount": 6.5, "status": "delivered", "email": "ann@x.com", "created_at": "2024-01-03T10:00:00Z", "updated_at": "2024-01-09T10:00:00Z"}
{"order_id": 6, "customer_id": 11, "product_id": 101, "quantity": 2, "amount": 11, "status": "paid", "email": "bob@y.com", "created_at": "2024-01-10T10:00:00Z", "updated_at": "2024-01-10T10:00:00Z"}
"#;

pub const CUSTOMERS: &str = "customer_id,customer_name,customer_segment,region\n10,Ann,Consumer,North\n11,Bob,Corporate,South\n";
pub const PRODUCTS: &str = "product_id;product_name;category\n100;Lamp;Home\n101;Book;Media\n";

/// A workspace with the shop spec and its first batch.
pub fn shop() -> Workspace {
    let ws = Workspace::new();
    ws.write("pipeline.yaml", SPEC);
    ws.write("data/orders/orders_1.jsonl", ORDERS_1);
    ws.write("data/orders/orders_2.jsonl", ORDERS_2);
    ws.write("data/customers.csv", CUSTOMERS);
    ws.write("data/products.csv", PRODUCTS);
    ws
}
