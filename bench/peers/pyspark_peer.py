"""The ecommerce pipeline in PySpark (local mode), writing Parquet (Delta's jars are not on PyPI)."""
import os

from common import CUSTOMER_360, ORDER_FIELDS, PRODUCT_PERFORMANCE, Stages, arguments, spark_session

args = arguments()
if args.format != "parquet":
    raise SystemExit("pyspark_peer writes Parquet only: delta-spark needs jars from Maven")

from pyspark.sql import Window  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.types import StringType, StructField, StructType  # noqa: E402

spark = spark_session(args.threads, "medallion-bench")
stages = Stages()


def write(df, name, partition_by=None):
    path = os.path.join(args.out, name)
    writer = df.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(path)
    return path


def with_meta(df, source):
    return (df.withColumn("_ingested_at", F.current_timestamp())
              .withColumn("_source_file", F.input_file_name())
              .withColumn("_source_name", F.lit(source))
              .withColumn("_ingestion_date", F.current_date()))


def bronze():
    schema = StructType([StructField(f, StringType()) for f in ORDER_FIELDS]
                        + [StructField("_rescued_data", StringType())])
    orders = (spark.read.schema(schema).option("mode", "PERMISSIVE")
              .option("columnNameOfCorruptRecord", "_rescued_data")
              .json(f"{args.data}/orders/*.jsonl"))
    customers = spark.read.option("header", True).option("inferSchema", True).csv(f"{args.data}/customers/*.csv")
    products = spark.read.parquet(f"{args.data}/products/*.parquet")
    return {name: write(with_meta(df, source), f"bronze_{name}", ["_ingestion_date"])
            for name, df, source in (("orders", orders, "ecommerce_api"), ("customers", customers, "crm"),
                                     ("products", products, "catalog"))}


def silver(paths):
    b = spark.read.parquet(paths["orders"])
    created = F.to_timestamp("created_at")
    latest = Window.partitionBy("order_id").orderBy(
        F.col("_updated").desc_nulls_last(), F.col("_ingested_at").desc(), F.col("_source_file").desc())
    orders = (
        b.select(
            F.col("order_id").cast("bigint"), F.col("customer_id").cast("bigint"),
            F.col("product_id").cast("bigint"), F.col("quantity").cast("int"),
            F.col("amount").cast("decimal(12,2)"), F.coalesce("status", F.lit("unknown")).alias("status"),
            F.lower(F.trim("email")).alias("email"), created.alias("created_at"),
            F.to_timestamp("updated_at").alias("updated_at"), F.to_date(created).alias("order_date"),
            F.to_timestamp("updated_at").alias("_updated"), "_ingested_at", "_source_file")
        .where(F.col("order_id").isNotNull() & (F.col("amount") > 0))
        .withColumn("rn", F.row_number().over(latest))
        .where("rn = 1")
        .drop("rn", "_updated", "_ingested_at", "_source_file")
    )
    c = spark.read.parquet(paths["customers"])
    customers = c.select("customer_id", F.trim("customer_name").alias("customer_name"),
                         F.lower(F.trim("email")).alias("email"), "customer_segment", "region",
                         "signup_date").where("customer_id IS NOT NULL")
    p = spark.read.parquet(paths["products"])
    products = p.select(F.col("product_id").cast("bigint"), "product_name", "category",
                        F.col("unit_price").cast("decimal(10,2)"))
    return {name: write(df, f"silver_{name}")
            for name, df in (("orders", orders), ("customers", customers), ("products", products))}


def gold(paths):
    for t, path in paths.items():
        spark.read.parquet(path).createOrReplaceTempView(f"silver_{t}")
    for name, sql in (("customer_360", CUSTOMER_360.replace("date_diff('day', ", "datediff(")
                       .replace("min(o.order_date), max(o.order_date))", "max(o.order_date), min(o.order_date))")),
                      ("product_performance", PRODUCT_PERFORMANCE)):
        df = spark.sql(sql).cache()
        write(df, name)
        stages.rows[name] = df.count()


bronze_paths = stages.run("bronze", bronze)
silver_paths = stages.run("silver", lambda: silver(bronze_paths))
stages.run("gold", lambda: gold(silver_paths))
stages.report()
spark.stop()
