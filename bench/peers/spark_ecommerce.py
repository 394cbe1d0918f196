"""The ecommerce pipeline on a Spark session: PySpark's own (local JVM) or Sail's (Spark Connect).

`sail`: Sail has no `input_file_name()`, so each raw file is read on its own to set
`_source_file`, and its JSON reader fails on a malformed line where Spark's keeps it
(PERMISSIVE), so lines are read as text and parsed with `from_json` (NULL for a malformed
one, kept aside in `_rescued_data` as Spark does). Writes Delta or Parquet as `args.format`
says.
"""
import glob
import os

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from common import CUSTOMER_360, ORDER_FIELDS, PRODUCT_PERFORMANCE, Stages


def run(spark, args, sail):
    stages = Stages()

    def write(df, name, partition_by=None):
        path = os.path.join(args.out, name)
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.format(args.format).save(path)
        return path

    def read(path):
        return spark.read.format(args.format).load(path)

    def raw(pattern, reader):
        """The files' rows with `_source_file`, as the ingestion metadata needs it."""
        if not sail:
            return reader(pattern).withColumn("_source_file", F.input_file_name())
        frames = [reader(f).withColumn("_source_file", F.lit("file://" + f)) for f in sorted(glob.glob(pattern))]
        out = frames[0]
        for df in frames[1:]:
            out = out.unionByName(df)
        return out

    def with_meta(df, source):
        return (df.withColumn("_ingested_at", F.current_timestamp())
                  .withColumn("_source_name", F.lit(source))
                  .withColumn("_ingestion_date", F.current_date()))

    def bronze():
        schema = StructType([StructField(f, StringType()) for f in ORDER_FIELDS]
                            + [StructField("_rescued_data", StringType())])
        def json_lines(p):
            if not sail:
                return (spark.read.schema(schema).option("mode", "PERMISSIVE")
                        .option("columnNameOfCorruptRecord", "_rescued_data").json(p))
            record = F.from_json("value", StructType(schema.fields[:-1]))
            lines = spark.read.text(p).where(F.trim("value") != "").withColumn("r", record)
            return lines.select(*[F.col("r")[f].alias(f) for f in ORDER_FIELDS],
                                F.when(F.col("r").isNull(), F.col("value")).alias("_rescued_data"))

        orders = raw(f"{args.data}/orders/*.jsonl", json_lines)
        customers = raw(f"{args.data}/customers/*.csv",
                        lambda p: spark.read.option("header", True).option("inferSchema", True).csv(p))
        products = raw(f"{args.data}/products/*.parquet", lambda p: spark.read.parquet(p))
        return {name: write(with_meta(df, source), f"bronze_{name}", ["_ingestion_date"])
                for name, df, source in (("orders", orders, "ecommerce_api"), ("customers", customers, "crm"),
                                         ("products", products, "catalog"))}

    def silver(paths):
        b = read(paths["orders"])
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
        c = read(paths["customers"])
        customers = c.select("customer_id", F.trim("customer_name").alias("customer_name"),
                             F.lower(F.trim("email")).alias("email"), "customer_segment", "region",
                             "signup_date").where("customer_id IS NOT NULL")
        p = read(paths["products"])
        products = p.select(F.col("product_id").cast("bigint"), "product_name", "category",
                            F.col("unit_price").cast("decimal(10,2)"))
        return {name: write(df, f"silver_{name}")
                for name, df in (("orders", orders), ("customers", customers), ("products", products))}

    def gold(paths):
        for t, path in paths.items():
            read(path).createOrReplaceTempView(f"silver_{t}")
        for name, sql in (("customer_360", CUSTOMER_360.replace("date_diff('day', ", "datediff(")
                           .replace("min(o.order_date), max(o.order_date))", "max(o.order_date), min(o.order_date))")),
                          ("product_performance", PRODUCT_PERFORMANCE)):
            path = write(spark.sql(sql), name)
            stages.rows[name] = read(path).count()

    bronze_paths = stages.run("bronze", bronze)
    silver_paths = stages.run("silver", lambda: silver(bronze_paths))
    stages.run("gold", lambda: gold(silver_paths))
    stages.report()
