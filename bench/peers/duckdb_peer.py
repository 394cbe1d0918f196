"""The ecommerce pipeline in DuckDB, writing Delta through Python deltalake, or Parquet."""
import os

import duckdb
from deltalake import write_deltalake

from common import CUSTOMER_360, ORDER_FIELDS, PRODUCT_PERFORMANCE, Stages, arguments, exit_now

args = arguments()
con = duckdb.connect()
con.execute(f"SET threads = {args.threads}")
con.execute("SET TimeZone = 'UTC'")
stages = Stages()


def write(name, partition_by=None):
    """Writes table `name` to the lake and registers it for the next layer."""
    path = os.path.join(args.out, name)
    if args.format == "delta":
        reader = con.execute(f"SELECT * FROM {name}").fetch_record_batch()
        write_deltalake(path, reader, mode="overwrite", partition_by=partition_by)
        return path
    os.makedirs(path, exist_ok=True)
    if partition_by:
        con.execute(f"COPY {name} TO '{path}' (FORMAT parquet, PARTITION_BY ({', '.join(partition_by)}), OVERWRITE_OR_IGNORE)")
    else:
        con.execute(f"COPY {name} TO '{path}/data.parquet' (FORMAT parquet)")
    return path


def read(name, path):
    """Reads a table the previous layer wrote."""
    if args.format == "delta":
        from deltalake import DeltaTable
        dataset = DeltaTable(path).to_pyarrow_dataset()
        con.register(name, dataset)
    else:
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning=true)")


def bronze():
    columns = ", ".join(f"{f}: 'VARCHAR'" for f in ORDER_FIELDS)
    meta = ("now() AS _ingested_at, filename AS _source_file, '{0}' AS _source_name, "
            "CAST(now() AS DATE) AS _ingestion_date")
    con.execute(f"""CREATE TABLE bronze_orders AS SELECT * EXCLUDE (filename), {meta.format('ecommerce_api')}
        FROM read_json('{args.data}/orders/*.jsonl', format='newline_delimited', ignore_errors=true,
                       filename=true, columns={{{columns}}})""")
    con.execute(f"""CREATE TABLE bronze_customers AS SELECT * EXCLUDE (filename), {meta.format('crm')}
        FROM read_csv('{args.data}/customers/*.csv', header=true, filename=true)""")
    con.execute(f"""CREATE TABLE bronze_products AS SELECT * EXCLUDE (filename), {meta.format('catalog')}
        FROM read_parquet('{args.data}/products/*.parquet', filename=true)""")
    return {t: write(f"bronze_{t}", ["_ingestion_date"]) for t in ("orders", "customers", "products")}


def silver(paths):
    for t, path in paths.items():
        read(f"b_{t}", path)
    con.execute("""CREATE TABLE silver_orders AS
        SELECT * EXCLUDE (rn, _updated, _ingested, _file) FROM (
          SELECT *, row_number() OVER (PARTITION BY order_id ORDER BY _updated DESC NULLS LAST,
                                       _ingested DESC, _file DESC) AS rn
          FROM (
            SELECT CAST(order_id AS BIGINT) AS order_id, CAST(customer_id AS BIGINT) AS customer_id,
                   CAST(product_id AS BIGINT) AS product_id, CAST(quantity AS INTEGER) AS quantity,
                   CAST(amount AS DECIMAL(12,2)) AS amount, coalesce(status, 'unknown') AS status,
                   lower(trim(email)) AS email, CAST(created_at AS TIMESTAMPTZ) AS created_at,
                   CAST(updated_at AS TIMESTAMPTZ) AS updated_at,
                   CAST(CAST(created_at AS TIMESTAMPTZ) AS DATE) AS order_date,
                   CAST(updated_at AS TIMESTAMPTZ) AS _updated, _ingested_at AS _ingested,
                   _source_file AS _file
            FROM b_orders)
          WHERE order_id IS NOT NULL AND amount > 0)
        WHERE rn = 1""")
    con.execute("""CREATE TABLE silver_customers AS
        SELECT customer_id, trim(customer_name) AS customer_name, lower(trim(email)) AS email,
               customer_segment, region, signup_date
        FROM b_customers WHERE customer_id IS NOT NULL""")
    con.execute("""CREATE TABLE silver_products AS
        SELECT CAST(product_id AS BIGINT) AS product_id, product_name, category,
               CAST(unit_price AS DECIMAL(10,2)) AS unit_price FROM b_products""")
    return {t: write(f"silver_{t}") for t in ("orders", "customers", "products")}


def gold(paths):
    for t, path in paths.items():
        con.execute(f"DROP TABLE IF EXISTS silver_{t}")
        read(f"silver_{t}", path)
    con.execute(f"CREATE TABLE customer_360 AS {CUSTOMER_360}")
    con.execute(f"CREATE TABLE product_performance AS {PRODUCT_PERFORMANCE}")
    for t in ("customer_360", "product_performance"):
        write(t)
        stages.rows[t] = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]


bronze_paths = stages.run("bronze", bronze)
silver_paths = stages.run("silver", lambda: silver(bronze_paths))
stages.run("gold", lambda: gold(silver_paths))
stages.report()
exit_now()
