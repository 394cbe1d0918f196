"""The ecommerce pipeline in PySpark (local mode), writing Parquet (Delta's jars are not on PyPI)."""
from common import arguments, spark_session

args = arguments()
if args.format != "parquet":
    raise SystemExit("pyspark_peer writes Parquet only: delta-spark needs jars from Maven")

import spark_ecommerce  # noqa: E402

spark = spark_session(args.threads, "medallion-bench")
spark_ecommerce.run(spark, args, sail=False)
spark.stop()
