"""The ecommerce pipeline in Daft (native runner), writing Delta through deltalake, or Parquet.

Daft 0.7.24: later versions need pyiceberg to write Delta. It runs in a virtualenv of its own
(`need_daft` in scripts/deps.sh), as it pins another pyarrow than the tests' readers.
"""
import datetime
import os

from common import ORDER_FIELDS, Stages, arguments, daft_read, daft_write, exit_now

args = arguments()
import daft  # noqa: E402
from daft import DataType, Window, col, lit  # noqa: E402
from daft.functions import row_number  # noqa: E402

daft.set_runner_native(num_threads=args.threads)
stages = Stages()


def write(df, name, partition_by=None):
    return daft_write(df, os.path.join(args.out, name), args.format, partition_by)


def read(path):
    return daft_read(path, args.format)


def with_meta(df, source):
    now = datetime.datetime.now(datetime.timezone.utc)
    return df.with_columns({
        # Delta takes "UTC", not the "+00:00" a Python datetime's zone becomes.
        "_ingested_at": lit(now).cast(DataType.timestamp("us", "UTC")),
        "_source_name": lit(source),
        "_ingestion_date": lit(now.date()),
    })


def bronze():
    # Daft's JSON reader fails on a malformed line: read lines, keep those that parse.
    lines = daft.read_csv(f"{args.data}/orders/*.jsonl", has_headers=False, infer_schema=False,
                          schema={"line": DataType.string()}, delimiter="\x1f", quote="\x1e",
                          double_quote=False, file_path_column="_source_file")
    record = DataType.struct({f: DataType.string() for f in ORDER_FIELDS})
    parsed = lines.with_column("record", col("line").try_deserialize("json", record))
    orders = parsed.where(col("record").not_null()).select(
        *[col("record")[f].alias(f) for f in ORDER_FIELDS], col("_source_file"))
    customers = daft.read_csv(f"{args.data}/customers/*.csv", file_path_column="_source_file")
    products = daft.read_parquet(f"{args.data}/products/*.parquet", file_path_column="_source_file")
    return {name: write(with_meta(df, source), f"bronze_{name}", ["_ingestion_date"])
            for name, df, source in (("orders", orders, "ecommerce_api"), ("customers", customers, "crm"),
                                     ("products", products, "catalog"))}


def silver(paths):
    created = col("created_at").cast(DataType.timestamp("us", "UTC"))
    updated = col("updated_at").cast(DataType.timestamp("us", "UTC"))
    latest = Window().partition_by("order_id").order_by(
        ["updated_at", "_ingested_at", "_source_file"], desc=[True, True, True], nulls_first=[False, False, False])
    orders = (
        read(paths["orders"])
        .select(
            col("order_id").cast(DataType.int64()),
            col("customer_id").cast(DataType.int64()),
            col("product_id").cast(DataType.int64()),
            col("quantity").cast(DataType.int32()),
            col("amount").cast(DataType.decimal128(12, 2)),
            col("status").fill_null("unknown"),
            col("email").strip().lower(),
            created.alias("created_at"),
            updated.alias("updated_at"),
            created.date().alias("order_date"),
            col("_ingested_at"),
            col("_source_file"),
        )
        .where(col("order_id").not_null() & (col("amount") > 0))
        .with_column("rn", row_number().over(latest))
        .where(col("rn") == 1)
        .exclude("rn", "_ingested_at", "_source_file")
    )
    customers = read(paths["customers"]).select(
        col("customer_id"),
        col("customer_name").strip(),
        col("email").strip().lower(),
        col("customer_segment"), col("region"), col("signup_date"),
    ).where(col("customer_id").not_null())
    products = read(paths["products"]).select(
        col("product_id"), col("product_name"), col("category"),
        col("unit_price").cast(DataType.decimal128(10, 2)),
    )
    return {name: write(df, f"silver_{name}")
            for name, df in (("orders", orders), ("customers", customers), ("products", products))}


def gold(paths):
    o, c, p = (read(paths[t]) for t in ("orders", "customers", "products"))
    c360 = (
        o.join(c, on="customer_id")
        .groupby("customer_id", "customer_name", "customer_segment", "region")
        .agg(
            col("order_id").count().alias("total_orders"),
            col("amount").sum().alias("lifetime_value"),
            col("amount").cast(DataType.float64()).mean().alias("avg_order_value"),
            col("order_date").max().alias("last_order_date"),
            col("order_date").min().alias("first_order_date"),
        )
        # Days since the epoch: Daft's date difference gives 0 from total_days().
        .with_column("customer_tenure_days", col("last_order_date").cast(DataType.int32())
                     - col("first_order_date").cast(DataType.int32()))
    )
    perf = (
        o.join(p, on="product_id")
        .groupby("product_id", "product_name", "category")
        .agg(
            col("quantity").sum().alias("units_sold"),
            col("amount").sum().alias("revenue"),
            col("customer_id").count_distinct().alias("unique_customers"),
        )
    )
    for name, df in (("customer_360", c360), ("product_performance", perf)):
        write(df, name)
        stages.rows[name] = read(os.path.join(args.out, name)).count_rows()


bronze_paths = stages.run("bronze", bronze)
silver_paths = stages.run("silver", lambda: silver(bronze_paths))
stages.run("gold", lambda: gold(silver_paths))
stages.report()
exit_now()
