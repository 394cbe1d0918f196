"""What every peer shares: arguments, stage timing and the logic they all implement.

The work is the ecommerce example pipeline (examples/ecommerce/pipeline.yaml), layer by layer,
each layer written to storage and read back by the next, as a medallion pipeline does:

  bronze  orders (JSON lines, every field as text), customers (CSV), products (Parquet), plus
          _ingested_at, _source_file, _source_name, _ingestion_date (the partition column)
  silver  orders: typed, email lower(trim), status coalesce 'unknown', order_date from
          created_at, order_id not null and amount > 0, latest per order_id by updated_at
          (ties: later file); customers: email lower(trim), customer_name trim; products: typed
  gold    customer_360 and product_performance (the same SQL as the example)

Every peer prints one JSON object: {"stages": {"bronze": s, "silver": s, "gold": s}, "rows": {...}}.
"""
import argparse
import json
import os
import sys
import time

CUSTOMER_360 = """
    SELECT c.customer_id, c.customer_name, c.customer_segment, c.region,
           count(o.order_id) AS total_orders, sum(o.amount) AS lifetime_value,
           avg(o.amount) AS avg_order_value, max(o.order_date) AS last_order_date,
           min(o.order_date) AS first_order_date,
           date_diff('day', min(o.order_date), max(o.order_date)) AS customer_tenure_days
    FROM silver_orders o JOIN silver_customers c ON o.customer_id = c.customer_id
    GROUP BY c.customer_id, c.customer_name, c.customer_segment, c.region
"""

PRODUCT_PERFORMANCE = """
    SELECT p.product_id, p.product_name, p.category, sum(o.quantity) AS units_sold,
           sum(o.amount) AS revenue, count(DISTINCT o.customer_id) AS unique_customers
    FROM silver_orders o JOIN silver_products p ON o.product_id = p.product_id
    GROUP BY p.product_id, p.product_name, p.category
"""

ORDER_FIELDS = ["order_id", "customer_id", "product_id", "quantity", "amount", "status",
                "email", "created_at", "updated_at"]


def arguments(engines=None, data_help="directory with orders/, customers/, products/"):
    """The peers' command line; `engines`, when given, adds a first argument choosing one."""
    p = argparse.ArgumentParser()
    if engines:
        p.add_argument("engine", choices=engines)
    p.add_argument("data", help=data_help)
    p.add_argument("out", help="directory for the lake this peer writes")
    p.add_argument("--format", choices=["delta", "parquet"], default="delta")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def polars_write(df, path, fmt, partition_by=None):
    """Writes a Polars frame as a Delta table (through deltalake) or as Parquet files."""
    if fmt == "delta":
        options = {"partition_by": partition_by} if partition_by else None
        df.write_delta(path, mode="overwrite", delta_write_options=options)
    else:
        os.makedirs(path, exist_ok=True)
        if partition_by:
            df.write_parquet(path, partition_by=partition_by)
        else:
            df.write_parquet(os.path.join(path, "data.parquet"))
    return path


def daft_write(df, path, fmt, partition_by=None):
    """Writes a Daft frame as a Delta table (through deltalake) or as Parquet files."""
    if fmt == "delta":
        df.write_deltalake(path, mode="overwrite", partition_cols=partition_by)
    else:
        df.write_parquet(path, write_mode="overwrite", partition_cols=partition_by)
    return path


def daft_read(path, fmt):
    """Reads what `daft_write` wrote."""
    import daft
    if fmt == "delta":
        return daft.read_deltalake(path)
    return daft.read_parquet(f"{path}/**/*.parquet", hive_partitioning=True)


def spark_session(threads, name):
    """A local Spark with `threads` cores, UTC, quiet."""
    from pyspark.sql import SparkSession
    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName(name)
        .config("spark.sql.shuffle.partitions", str(threads * 4))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def sail_session(threads):
    """A Spark Connect session to a Sail server started in this process, on `threads`
    threads (set before Sail loads)."""
    os.environ["TOKIO_WORKER_THREADS"] = str(threads)
    os.environ["SAIL_EXECUTION__DEFAULT_PARALLELISM"] = str(threads)
    from pysail.spark import SparkConnectServer
    from pyspark.sql import SparkSession
    server = SparkConnectServer()
    server.start(background=True)
    host, port = server.listening_address
    spark = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    # The server stops when collected: it lives as long as its session.
    spark._sail_server = server
    return spark


class Stages:
    """Times the stages of one run."""

    def __init__(self):
        self.times = {}
        self.rows = {}

    def run(self, name, fn):
        start = time.perf_counter()
        result = fn()
        self.times[name] = round(time.perf_counter() - start, 3)
        return result

    def report(self):
        print(json.dumps({"stages": self.times, "rows": self.rows}))


def exit_now():
    """Ends the process once its report is out. The native libraries of DuckDB and delta-rs
    sometimes abort in their exit-time teardown ("terminate called without an active
    exception", seen in a CI run), which would fail a peer whose work was done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
