"""The ecommerce pipeline on Sail (LakeSail's Rust engine behind Spark Connect), writing Delta
or Parquet: the PySpark peer's code on a Spark Connect session to a Sail server in this process.

pysail 0.7.2 takes PySpark clients 3.5 and 4.0-4.2, not the 4.3 of the other peers, so it runs
in a virtualenv of its own (`need_sail` in scripts/deps.sh).
"""
from common import arguments, exit_now, sail_session

args = arguments()
spark = sail_session(args.threads)

import spark_ecommerce  # noqa: E402

spark_ecommerce.run(spark, args, sail=True)
exit_now()
