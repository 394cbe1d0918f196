"""The TPC-H pipeline (examples/tpch/pipeline.yaml) in DuckDB, Polars, PySpark, Sail or Daft.

    tpch.py <duckdb|polars|pyspark|sail|daft> <data> <out> [--format delta|parquet] [--threads N]

The tables, their keys and columns and the gold queries are read from the pipeline spec, so
every engine does the same work: bronze lands each table with the ingestion metadata columns
(partitioned by _ingestion_date), silver keeps the spec's columns and one row per key (latest
_ingested_at, then _source_file), gold runs each query and writes its answer. Each layer is
written and read back by the next. Prints the same JSON line as the ecommerce peers.
"""
import datetime
import os
import sys

import yaml

from common import (Stages, arguments, daft_read, daft_write, exit_now, polars_write, sail_session,
                    spark_session)

SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "tpch", "pipeline.yaml")


class DuckDB:
    def __init__(self, args):
        import duckdb
        self.args = args
        self.con = duckdb.connect()
        self.con.execute(f"SET threads = {args.threads}")
        self.con.execute("SET TimeZone = 'UTC'")

    def write(self, query, name, partition_by=None):
        path = os.path.join(self.args.out, name)
        if self.args.format == "delta":
            from deltalake import write_deltalake
            write_deltalake(path, self.con.execute(query).fetch_record_batch(), mode="overwrite",
                            partition_by=partition_by)
            return path
        os.makedirs(path, exist_ok=True)
        if partition_by:
            self.con.execute(f"COPY ({query}) TO '{path}' (FORMAT parquet, PARTITION_BY ({', '.join(partition_by)}), OVERWRITE_OR_IGNORE)")
        else:
            self.con.execute(f"COPY ({query}) TO '{path}/data.parquet' (FORMAT parquet)")
        return path

    def view(self, name, path):
        if self.args.format == "delta":
            from deltalake import DeltaTable
            self.con.register(name, DeltaTable(path).to_pyarrow_dataset())
        else:
            self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning=true)")

    def bronze(self, table, files):
        query = (f"SELECT * EXCLUDE (filename), now() AS _ingested_at, filename AS _source_file, "
                 f"'{table}' AS _source_name, CAST(now() AS DATE) AS _ingestion_date "
                 f"FROM read_parquet('{files}', filename=true)")
        return self.write(query, f"bronze_{table}", ["_ingestion_date"])

    def silver(self, table, bronze, keys, columns):
        self.view(f"b_{table}", bronze)
        query = (f"SELECT {', '.join(columns)} FROM b_{table} QUALIFY row_number() OVER "
                 f"(PARTITION BY {', '.join(keys)} ORDER BY _ingested_at DESC, _source_file DESC) = 1")
        return self.write(query, f"silver_{table}")

    def gold(self, name, sql, silver):
        for t, path in silver.items():
            self.view(f"silver_{t}", path)
        path = self.write(sql, name)
        return path, self.con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]


class Polars:
    def __init__(self, args):
        os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # read when polars loads
        import polars as pl
        self.pl = pl
        self.args = args

    def write(self, df, name, partition_by=None):
        return polars_write(df, os.path.join(self.args.out, name), self.args.format, partition_by)

    def read(self, path):
        if self.args.format == "delta":
            return self.pl.scan_delta(path)
        return self.pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True)

    def bronze(self, table, files):
        pl = self.pl
        now = datetime.datetime.now(datetime.timezone.utc)
        lf = pl.scan_parquet(files, include_file_paths="_source_file").with_columns(
            pl.lit(now).alias("_ingested_at"), pl.lit(table).alias("_source_name"),
            pl.lit(now.date()).alias("_ingestion_date"))
        return self.write(lf.collect(), f"bronze_{table}", ["_ingestion_date"])

    def silver(self, table, bronze, keys, columns):
        lf = (self.read(bronze)
              .sort(["_ingested_at", "_source_file"], descending=True)
              .unique(subset=keys, keep="first", maintain_order=False)
              .select(columns))
        return self.write(lf.collect(), f"silver_{table}")

    def gold(self, name, sql, silver):
        ctx = self.pl.SQLContext({f"silver_{t}": self.read(p) for t, p in silver.items()})
        df = ctx.execute(sql).collect()
        return self.write(df, name), df.height


class PySpark:
    def __init__(self, args):
        if args.format != "parquet":
            raise SystemExit("the pyspark peer writes Parquet only: delta-spark needs jars from Maven")
        from pyspark.sql import functions as F
        self.F = F
        self.args = args
        self.spark = spark_session(args.threads, "medallion-bench-tpch")

    def write(self, df, name, partition_by=None):
        path = os.path.join(self.args.out, name)
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.parquet(path)
        return path

    def bronze(self, table, files):
        F = self.F
        df = (self.spark.read.parquet(files)
              .withColumn("_ingested_at", F.current_timestamp())
              .withColumn("_source_file", F.input_file_name())
              .withColumn("_source_name", F.lit(table))
              .withColumn("_ingestion_date", F.current_date()))
        return self.write(df, f"bronze_{table}", ["_ingestion_date"])

    def silver(self, table, bronze, keys, columns, read=None):
        from pyspark.sql import Window
        F = self.F
        latest = Window.partitionBy(*keys).orderBy(F.col("_ingested_at").desc(), F.col("_source_file").desc())
        df = ((read or self.spark.read.parquet)(bronze).withColumn("rn", F.row_number().over(latest))
              .where("rn = 1").select(*columns))
        return self.write(df, f"silver_{table}")

    def gold(self, name, sql, silver):
        for t, path in silver.items():
            self.spark.read.parquet(path).createOrReplaceTempView(f"silver_{t}")
        df = self.spark.sql(sql).cache()
        return self.write(df, name), df.count()


class Sail(PySpark):
    """The PySpark engine's code on a Spark Connect session to Sail, writing Delta or Parquet.
    Sail has no `input_file_name()`: each file is read on its own to set `_source_file`."""

    def __init__(self, args):
        from pyspark.sql import functions as F
        self.F = F
        self.args = args
        self.spark = sail_session(args.threads)

    def write(self, df, name, partition_by=None):
        path = os.path.join(self.args.out, name)
        writer = df.write.mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.format(self.args.format).save(path)
        return path

    def read(self, path):
        return self.spark.read.format(self.args.format).load(path)

    def bronze(self, table, files):
        import glob
        F = self.F
        frames = [self.spark.read.parquet(f).withColumn("_source_file", F.lit("file://" + f))
                  for f in sorted(glob.glob(files))]
        df = frames[0]
        for more in frames[1:]:
            df = df.unionByName(more)
        df = (df.withColumn("_ingested_at", F.current_timestamp())
              .withColumn("_source_name", F.lit(table))
              .withColumn("_ingestion_date", F.current_date()))
        return self.write(df, f"bronze_{table}", ["_ingestion_date"])

    def silver(self, table, bronze, keys, columns):
        return super().silver(table, bronze, keys, columns, read=self.read)

    def gold(self, name, sql, silver):
        for t, path in silver.items():
            self.read(path).createOrReplaceTempView(f"silver_{t}")
        path = self.write(self.spark.sql(sql), name)
        return path, self.read(path).count()


class Daft:
    def __init__(self, args):
        import daft
        daft.set_runner_native(num_threads=args.threads)
        self.daft = daft
        self.args = args

    def write(self, df, name, partition_by=None):
        return daft_write(df, os.path.join(self.args.out, name), self.args.format, partition_by)

    def bronze(self, table, files):
        from daft import DataType, lit
        now = datetime.datetime.now(datetime.timezone.utc)
        df = self.daft.read_parquet(files, file_path_column="_source_file").with_columns({
            # Delta takes "UTC", not the "+00:00" a Python datetime's zone becomes.
            "_ingested_at": lit(now).cast(DataType.timestamp("us", "UTC")),
            "_source_name": lit(table),
            "_ingestion_date": lit(now.date()),
        })
        return self.write(df, f"bronze_{table}", ["_ingestion_date"])

    def silver(self, table, bronze, keys, columns):
        from daft import Window, col
        from daft.functions import row_number
        latest = Window().partition_by(*keys).order_by(["_ingested_at", "_source_file"], desc=[True, True])
        df = (daft_read(bronze, self.args.format).with_column("rn", row_number().over(latest))
              .where(col("rn") == 1).select(*columns))
        return self.write(df, f"silver_{table}")

    def gold(self, name, sql, silver):
        tables = {f"silver_{t}": self.as_float(daft_read(p, self.args.format)) for t, p in silver.items()}
        path = self.write(self.daft.sql(sql, **tables), name)
        return path, daft_read(path, self.args.format).count_rows()

    def as_float(self, df):
        """Decimals as doubles: Daft 0.7 does not cap a product's decimal precision at 38, so
        Q1's `price * (1 - discount) * (1 + tax)` fails to plan. The harness compares sums
        within 1e-6 relative."""
        from daft import DataType, col
        return df.select(*[col(f.name).cast(DataType.float64()) if f.dtype.is_decimal128() else col(f.name)
                           for f in df.schema()])


def main():
    args = arguments(["duckdb", "polars", "pyspark", "sail", "daft"],
                     data_help="directory with one directory of Parquet files per TPC-H table")
    spec = yaml.safe_load(open(SPEC))
    engine = {"duckdb": DuckDB, "polars": Polars, "pyspark": PySpark, "sail": Sail, "daft": Daft}[args.engine](args)
    stages = Stages()
    sources = {s["name"]: s["path"].replace("data/", "", 1) for s in spec["sources"]}
    bronze = stages.run("bronze", lambda: {
        b["name"]: engine.bronze(b["name"], os.path.join(args.data, sources[b["source"]]))
        for b in spec["bronze"]})
    silver = stages.run("silver", lambda: {
        s["name"]: engine.silver(s["name"], bronze[s["from"].split(".", 1)[1]], s["keys"],
                                 [c["name"] for c in s["columns"]])
        for s in spec["silver"]})

    def gold():
        for g in spec["gold"]:
            _, stages.rows[g["name"]] = engine.gold(g["name"], g["sql"].replace("silver.", "silver_"), silver)

    stages.run("gold", gold)
    stages.report()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
    exit_now()
