"""A user's own writer, committing to a bronze table on S3 while a Medallion run writes it.

  other_writer.py <table_url> <commits> <rows>

Waits until the run has staged a data file of its own under the table (so the run has read
the table's version before this writer commits), then appends <commits> commits of <rows>
rows each with Python deltalake, `_source_file` = `other-<n>`. DELTA_STORAGE_OPTIONS holds
the storage options as JSON. Prints "ready" once it has seen the files already there, and
the versions it committed as JSON at the end.
"""
import datetime
import json
import os
import sys
import time
from urllib.parse import urlparse

import boto3
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake


def main():
    url, commits, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    options = json.loads(os.environ["DELTA_STORAGE_OPTIONS"])
    s3 = boto3.client("s3", endpoint_url=options["AWS_ENDPOINT_URL"], region_name=options["AWS_REGION"],
                      aws_access_key_id=options["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=options["AWS_SECRET_ACCESS_KEY"])
    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/") + "/"

    def data_files():
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return {o["Key"] for p in pages for o in p.get("Contents", []) if o["Key"].endswith(".parquet")}

    before = data_files()
    print("ready", flush=True)
    deadline = time.time() + 300
    while not (data_files() - before):
        if time.time() > deadline:
            sys.exit("the run staged no file")
        time.sleep(0.02)

    schema = pa.schema(DeltaTable(url, storage_options=options).schema())
    now = datetime.datetime.now(datetime.timezone.utc)
    versions = []
    for n in range(commits):
        values = {"_source_file": f"other-{n}", "_source_name": "other", "_ingested_at": now,
                  "_ingestion_date": now.date()}
        columns = [pa.array([values.get(f.name, "x" if pa.types.is_string(f.type) else None)] * rows,
                            type=f.type) for f in schema]
        write_deltalake(url, pa.Table.from_arrays(columns, schema=schema), mode="append",
                        partition_by=["_ingestion_date"], storage_options=options)
        versions.append(DeltaTable(url, storage_options=options).version())
    print(json.dumps(versions), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
