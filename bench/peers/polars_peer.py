"""The ecommerce pipeline in Polars (lazy), writing Delta through deltalake, or Parquet."""
import datetime
import glob
import os

from common import ORDER_FIELDS, Stages, arguments, exit_now, polars_write  # noqa: E402

args = arguments()
os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # read when polars loads
import polars as pl  # noqa: E402

stages = Stages()


def write(df, name, partition_by=None):
    return polars_write(df, os.path.join(args.out, name), args.format, partition_by)


def read(path):
    if args.format == "delta":
        return pl.scan_delta(path)
    return pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True)


def with_meta(lf, source):
    now = datetime.datetime.now(datetime.timezone.utc)
    return lf.with_columns(
        pl.lit(now).alias("_ingested_at"),
        pl.lit(source).alias("_source_name"),
        pl.lit(now.date()).alias("_ingestion_date"),
    )


def bronze():
    # Polars' NDJSON reader stops at a malformed line: read lines, keep the valid ones.
    lines = pl.scan_csv(
        sorted(glob.glob(f"{args.data}/orders/*.jsonl")),
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["line"],
        schema={"line": pl.String},
        include_file_paths="_source_file",
    )
    record = pl.Struct({f: pl.String for f in ORDER_FIELDS})
    orders = (
        lines.filter(pl.col("line").str.json_path_match("$").is_not_null())
        .with_columns(pl.col("line").str.json_decode(record))
        .unnest("line")
    )
    customers = pl.scan_csv(f"{args.data}/customers/*.csv", include_file_paths="_source_file",
                            try_parse_dates=True)
    products = pl.scan_parquet(f"{args.data}/products/*.parquet", include_file_paths="_source_file")
    out = {}
    for name, lf, source in (("orders", orders, "ecommerce_api"), ("customers", customers, "crm"),
                             ("products", products, "catalog")):
        out[name] = write(with_meta(lf, source).collect(), f"bronze_{name}", ["_ingestion_date"])
    return out


def silver(paths):
    created = pl.col("created_at").str.to_datetime(time_zone="UTC")
    updated = pl.col("updated_at").str.to_datetime(time_zone="UTC")
    orders = (
        read(paths["orders"])
        .select(
            pl.col("order_id").cast(pl.Int64, strict=False),
            pl.col("customer_id").cast(pl.Int64, strict=False),
            pl.col("product_id").cast(pl.Int64, strict=False),
            pl.col("quantity").cast(pl.Int32, strict=False),
            pl.col("amount").cast(pl.Decimal(12, 2), strict=False),
            pl.col("status").fill_null("unknown"),
            pl.col("email").str.strip_chars().str.to_lowercase(),
            created.alias("created_at"),
            updated.alias("updated_at"),
            created.dt.date().alias("order_date"),
            pl.col("_ingested_at"),
            pl.col("_source_file"),
        )
        .filter(pl.col("order_id").is_not_null() & (pl.col("amount") > 0))
        .sort(["updated_at", "_ingested_at", "_source_file"], descending=True, nulls_last=True)
        .unique(subset=["order_id"], keep="first", maintain_order=False)
        .drop("_ingested_at", "_source_file")
    )
    customers = read(paths["customers"]).select(
        "customer_id",
        pl.col("customer_name").str.strip_chars(),
        pl.col("email").str.strip_chars().str.to_lowercase(),
        "customer_segment", "region", "signup_date",
    ).filter(pl.col("customer_id").is_not_null())
    products = read(paths["products"]).select(
        "product_id", "product_name", "category", pl.col("unit_price").cast(pl.Decimal(10, 2)),
    )
    return {name: write(lf.collect(), f"silver_{name}")
            for name, lf in (("orders", orders), ("customers", customers), ("products", products))}


def gold(paths):
    o, c, p = (read(paths[t]) for t in ("orders", "customers", "products"))
    c360 = (
        o.join(c, on="customer_id")
        .group_by("customer_id", "customer_name", "customer_segment", "region")
        .agg(
            pl.col("order_id").count().alias("total_orders"),
            pl.col("amount").sum().alias("lifetime_value"),
            pl.col("amount").cast(pl.Float64).mean().alias("avg_order_value"),
            pl.col("order_date").max().alias("last_order_date"),
            pl.col("order_date").min().alias("first_order_date"),
        )
        .with_columns((pl.col("last_order_date") - pl.col("first_order_date")).dt.total_days()
                      .alias("customer_tenure_days"))
    )
    perf = (
        o.join(p, on="product_id")
        .group_by("product_id", "product_name", "category")
        .agg(
            pl.col("quantity").sum().alias("units_sold"),
            pl.col("amount").sum().alias("revenue"),
            pl.col("customer_id").n_unique().alias("unique_customers"),
        )
    )
    for name, lf in (("customer_360", c360), ("product_performance", perf)):
        df = lf.collect()
        write(df, name)
        stages.rows[name] = df.height


bronze_paths = stages.run("bronze", bronze)
silver_paths = stages.run("silver", lambda: silver(bronze_paths))
stages.run("gold", lambda: gold(silver_paths))
stages.report()
exit_now()
