"""Reads Medallion's Delta tables with two readers that share no code with it.

  delta_check.py read <table> [<version>]  both readers; rows canonical and sorted. <table> is a
                                           directory or an s3:// or az:// URL (then DELTA_STORAGE_OPTIONS
                                           holds the storage options as JSON); the latest
                                           version unless one is given
  delta_check.py gold-reference <data_dir> the example's gold tables computed by DuckDB
                                           straight from the raw files
  delta_check.py orphans <table_dir>       data files on disk that no version of the table's
                                           log has ever added
  delta_check.py sql <table> <query> [<version>]
                                           DuckDB's answer to <query> over the table, as `t`
  delta_check.py scd-reference <glob> <tracked>
                                           a change feed (JSON lines: id, name, city, op, seq)
                                           read by DuckDB and replayed change by change in
                                           `seq` order into SCD type 1 and type 2 tables
                                           (<tracked>: the type 2 table's tracked columns)

Prints one JSON document on stdout.
"""
import datetime
import decimal
import glob
import json
import os
import sys

import duckdb
import duckdb_extension_azure
import duckdb_extension_delta
import duckdb_extension_httpfs
import pyarrow
from deltalake import DeltaTable


def canonical(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int,)):
        return value
    if isinstance(value, (float, decimal.Decimal)):
        return float(value)
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
        return value.isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


def canonical_rows(rows):
    out = [{k: canonical(v) for k, v in r.items()} for r in rows]
    out.sort(key=lambda r: json.dumps(r, sort_keys=True))
    return out


def storage_options_from_env():
    """The storage options in DELTA_STORAGE_OPTIONS; where Azurite listens goes to the
    environment, which is where delta-rs looks for it."""
    options = json.loads(os.environ.get("DELTA_STORAGE_OPTIONS", "{}")) or None
    if options and "AZURITE_BLOB_STORAGE_URL" in options:
        os.environ["AZURITE_BLOB_STORAGE_URL"] = options.pop("AZURITE_BLOB_STORAGE_URL")
    return options


def duckdb_connection(storage_options=None):
    con = duckdb.connect()
    # DuckDB cannot download extensions here; load the ones shipped on PyPI by path.
    modules = ((duckdb_extension_httpfs, "httpfs"), (duckdb_extension_azure, "azure"), (duckdb_extension_delta, "delta"))
    for module, name in modules:
        ext = glob.glob(
            os.path.join(os.path.dirname(module.__file__), f"**/{name}.duckdb_extension"), recursive=True
        )[0]
        con.execute(f"LOAD '{ext}'")
    con.execute("SET TimeZone = 'UTC'")
    # A query over two seconds draws a progress bar on standard output, where JSON goes.
    con.execute("SET enable_progress_bar = false")
    if storage_options and "azure_storage_account_name" in storage_options:
        account = storage_options["azure_storage_account_name"]
        connection = (f"DefaultEndpointsProtocol=http;AccountName={account};"
                      f"AccountKey={storage_options['azure_storage_account_key']};"
                      f"BlobEndpoint={os.environ['AZURITE_BLOB_STORAGE_URL']}/{account};")
        con.execute(f"CREATE SECRET (TYPE azure, CONNECTION_STRING '{connection}')")
    elif storage_options:
        endpoint = storage_options["AWS_ENDPOINT_URL"]
        quote = lambda v: "'" + str(v).replace("'", "''") + "'"
        con.execute(
            "CREATE SECRET (TYPE s3, URL_STYLE 'path', "
            f"KEY_ID {quote(storage_options['AWS_ACCESS_KEY_ID'])}, "
            f"SECRET {quote(storage_options['AWS_SECRET_ACCESS_KEY'])}, "
            f"REGION {quote(storage_options.get('AWS_REGION', 'us-east-1'))}, "
            f"ENDPOINT {quote(endpoint.split('://', 1)[-1])}, "
            f"USE_SSL {str(endpoint.startswith('https')).lower()})"
        )
    return con


def read(path, version=None):
    storage_options = storage_options_from_env()
    dt = DeltaTable(path, storage_options=storage_options, version=None if version is None else int(version))
    rows = canonical_rows(dt.to_pyarrow_table().to_pylist())
    con = duckdb_connection(storage_options)
    if version is None:
        scan = con.execute("SELECT * FROM delta_scan(?)", [path])
    else:
        scan = con.execute("SELECT * FROM delta_scan(?, version := ?)", [path, int(version)])
    duck = canonical_rows(scan.to_arrow_table().to_pylist())
    metadata = dt.metadata()
    return {
        "version": dt.version(),
        "partition_columns": list(metadata.partition_columns),
        "columns": [f.name for f in dt.schema().fields],
        "num_rows": len(rows),
        "num_files": len(dt.file_uris()),
        "rows": rows,
        "history": [h.get("operation") for h in dt.history()],
        # Newest first: whether Medallion made each commit (its commitInfo names the run).
        "medallion_commits": ["medallion.run_id" in h for h in dt.history()],
        "duckdb_num_rows": len(duck),
        "readers_agree": rows == duck,
    }


GOLD_SQL = {
    "customer_360": """
        SELECT c.customer_id, c.customer_name, c.customer_segment, c.region,
               count(o.order_id) AS total_orders, sum(o.amount) AS lifetime_value,
               avg(o.amount) AS avg_order_value, max(o.order_date) AS last_order_date,
               min(o.order_date) AS first_order_date,
               datediff('day', min(o.order_date), max(o.order_date)) AS customer_tenure_days
        FROM orders o JOIN customers c ON o.customer_id = c.customer_id
        GROUP BY ALL""",
    "product_performance": """
        SELECT p.product_id, p.product_name, p.category, sum(o.quantity) AS units_sold,
               sum(o.amount) AS revenue, count(DISTINCT o.customer_id) AS unique_customers
        FROM orders o JOIN products p ON o.product_id = p.product_id
        GROUP BY ALL""",
}


def gold_reference(data_dir):
    """The example's cleaning rules, written again in DuckDB over the raw files."""
    con = duckdb_connection()
    con.execute(f"""
        CREATE TABLE raw_orders AS
        SELECT *, filename AS file FROM read_json(
            '{data_dir}/orders/*.jsonl', format='newline_delimited', ignore_errors=true,
            filename=true, columns={{order_id: 'BIGINT', customer_id: 'BIGINT', product_id: 'BIGINT',
            quantity: 'INTEGER', amount: 'DECIMAL(12,2)', status: 'VARCHAR', email: 'VARCHAR',
            created_at: 'TIMESTAMP', updated_at: 'TIMESTAMP'}})""")
    con.execute("""
        CREATE TABLE orders AS
        SELECT * EXCLUDE (rn) FROM (
            SELECT order_id, customer_id, product_id, quantity, amount,
                   CAST(created_at AS DATE) AS order_date,
                   row_number() OVER (PARTITION BY order_id ORDER BY updated_at DESC, file DESC) AS rn
            FROM raw_orders WHERE order_id IS NOT NULL AND amount > 0)
        WHERE rn = 1""")
    con.execute(f"CREATE TABLE customers AS SELECT * FROM read_csv('{data_dir}/customers/*.csv', header=true)")
    con.execute(f"CREATE TABLE products AS SELECT * FROM read_parquet('{data_dir}/products/*.parquet')")
    out = {}
    for name, sql in GOLD_SQL.items():
        out[name] = canonical_rows(con.execute(sql).fetch_arrow_table().to_pylist())
    out["silver_orders_rows"] = con.execute("SELECT count(*) FROM orders").fetchone()[0]
    return out


def orphans(table_dir):
    """Files nobody committed: what failed or lost tasks left behind."""
    from urllib.parse import unquote
    added = set()
    for log in glob.glob(os.path.join(table_dir, "_delta_log", "*.json")):
        with open(log) as f:
            for line in f:
                action = json.loads(line)
                if "add" in action:
                    added.add(unquote(action["add"]["path"]))
    on_disk = set()
    for root, dirs, files in os.walk(table_dir):
        dirs[:] = [d for d in dirs if d != "_delta_log"]
        for name in files:
            if name.endswith(".parquet"):
                on_disk.add(os.path.relpath(os.path.join(root, name), table_dir))
    return {"orphans": sorted(on_disk - added), "files": len(on_disk)}


def sql(path, query, version=None):
    """DuckDB's own answer to a query over one table, at its latest version or `version`
    (values as DuckDB gives them, as text where they are not JSON numbers, so decimals keep
    every digit)."""
    con = duckdb_connection()
    at = "" if version is None else f", version := {int(version)}"
    con.execute("CREATE VIEW t AS SELECT * FROM delta_scan('" + path.replace("'", "''") + "'" + at + ")")
    cursor = con.execute(query)
    names = [d[0] for d in cursor.description]
    return [
        {n: v if v is None or isinstance(v, (bool, int, str)) else str(v) for n, v in zip(names, row)}
        for row in cursor.fetchall()
    ]


def cdf(path, starting_version):
    """The table's change data feed from a version on, as Python deltalake reads it: the
    table's configuration and each change with its type and version."""
    dt = DeltaTable(path)
    changes = pyarrow.table(dt.load_cdf(starting_version=int(starting_version)).read_all()).to_pylist()
    for change in changes:
        change.pop("_commit_timestamp", None)
    return {
        "configuration": dt.metadata().configuration,
        "changes": canonical_rows(changes),
    }


def scd_reference(pattern, tracked):
    """The tables a change feed makes, replayed one change at a time in sequence order: type 1
    keeps the last row per key (a delete removes it, a truncate removes all); type 2 opens a
    version when a key has none open or a tracked column changed, else updates the open one,
    and closes it at the next version's or a delete's sequence (truncates are not applied);
    `scd1_no_truncates` is type 1 with truncates not applied either."""
    con = duckdb.connect()
    cursor = con.execute(
        "SELECT id, name, city, op, seq FROM read_json_auto(?, filename = true) ORDER BY seq, filename",
        [pattern],
    )
    changes = [dict(zip(["id", "name", "city", "op", "seq"], row)) for row in cursor.fetchall()]
    tracked = tracked.split(",")
    latest, untruncated, versions, open_versions = {}, {}, [], {}
    for c in changes:
        row = {"id": c["id"], "name": c["name"], "city": c["city"]}
        if c["op"] == "TRUNCATE":
            latest.clear()
            continue
        current = open_versions.get(c["id"])
        if c["op"] == "DELETE":
            latest.pop(c["id"], None)
            untruncated.pop(c["id"], None)
            if current is not None:
                current["__end_at"] = c["seq"]
                del open_versions[c["id"]]
            continue
        latest[c["id"]] = row
        untruncated[c["id"]] = row
        version = dict(row, seq=c["seq"], __start_at=c["seq"], __end_at=None)
        if current is None:
            open_versions[c["id"]] = version
            versions.append(version)
        elif any(current[t] != row[t] for t in tracked):
            current["__end_at"] = c["seq"]
            open_versions[c["id"]] = version
            versions.append(version)
        else:
            current.update(row, seq=c["seq"])
    return {"scd1": canonical_rows(list(latest.values())),
            "scd1_no_truncates": canonical_rows(list(untruncated.values())),
            "scd2": canonical_rows(versions)}


def main():
    command, args = sys.argv[1], sys.argv[2:]
    commands = {"read": read, "gold-reference": gold_reference, "orphans": orphans, "sql": sql, "cdf": cdf,
                "scd-reference": scd_reference}
    json.dump(commands[command](*args), sys.stdout)
    # DuckDB's and delta-rs's native teardown sometimes aborts at exit ("terminate called
    # without an active exception"); the answer is out, so skip it.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
