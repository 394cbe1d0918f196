"""Runs the benchmark workloads on Medallion and its peers, checks they agree, writes a report.

    bench/run [--workloads ecommerce,tpch] [--scales 1000000,5000000] [--tpch-scales 1]
              [--peers duckdb,polars,pyspark,sail,daft] [--cluster 1,2] [--extras-up-to 5000000]
              [--time-limit 900] [--smoke]

Every engine gets the same files and the same number of threads; its wall time per stage and in
total, rows per second and peak memory (the whole process tree, sampled) are measured in this
run, and every peer's gold tables are compared with Medallion's before its time counts. A peer
past the time limit is stopped and reported as such. Each e-commerce scale also runs the floor
(bench/floor); with more than one scale the report shows how each engine's cost grows.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (engine, format): the peers and what they write.
PEERS = {
    "duckdb": [("duckdb", "delta"), ("duckdb", "parquet")],
    "polars": [("polars", "delta"), ("polars", "parquet")],
    "pyspark": [("pyspark", "parquet")],
    "sail": [("sail", "delta"), ("sail", "parquet")],
    "daft": [("daft", "delta"), ("daft", "parquet")],
}

# Peers that pin other versions of what the harness uses run on a Python of their own
# (scripts/deps.sh sets these): the variable naming it, and the module whose version it has.
PEER_PYTHON = {"sail": ("MEDALLION_SAIL_PYTHON", "pysail"), "daft": ("MEDALLION_DAFT_PYTHON", "daft")}


def peer_python(peer):
    return os.environ.get(PEER_PYTHON.get(peer, ("",))[0], sys.executable)


class TimeLimit(Exception):
    """A command ran past its time limit and was stopped."""


class Failed(RuntimeError):
    """A command exited with an error or was killed (by the kernel when memory ran out: -9)."""

    def __init__(self, cmd, returncode, err, peak):
        super().__init__(f"{' '.join(cmd)} failed ({returncode}):\n{err[-4000:]}")
        self.returncode, self.err, self.peak = returncode, err, peak

    def reason(self):
        """What a report says of it: the signal, or the error's last line."""
        if self.returncode < 0:
            return f"killed by signal {-self.returncode}" + (" (most likely out of memory)" if self.returncode == -9 else "")
        last = [line for line in self.err.strip().splitlines() if line.strip()]
        return f"failed: {last[-1][:200] if last else f'exit {self.returncode}'}"


def measure(cmd, cwd=None, env=None, servers=(), limit=None):
    """Runs a command; returns (stdout, seconds, peak RSS bytes of its whole process tree and
    of the `servers` it talks to). Past `limit` seconds its whole process group is killed and
    TimeLimit raised; if it fails, Failed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [parent] + parent.children(recursive=True) + [psutil.Process(p) for p in servers]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        done.set()
        raise TimeLimit(f"{' '.join(cmd)} stopped after {limit} s")
    done.set()
    sampler.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise Failed(cmd, proc.returncode, err, peak)
    return out, seconds, peak


class Ecommerce:
    """The example pipeline on the generated shop data; scale = orders."""
    name = "ecommerce"
    spec = os.path.join(ROOT, "examples", "ecommerce", "pipeline.yaml")
    gold = {"customer_360": ("customer_id",), "product_performance": ("product_id",)}
    unit = "orders"

    def __init__(self, orders):
        self.scale = orders
        self.label = f"ecommerce, {orders:,} orders"
        self.dir = f"ecommerce-{orders}"

    def generate(self, medallion, data):
        files = max(4, min(64, self.scale // 62_500))
        subprocess.run([medallion, "generate", data, "--orders", str(self.scale), "--files", str(files)],
                       check=True, stdout=subprocess.DEVNULL)

    def units(self, data):
        return self.scale

    def peer(self, engine):
        return [os.path.join(HERE, "peers", f"{engine}_peer.py")]


class Tpch:
    """examples/tpch on TPC-H data from tpchgen; scale = TPC-H scale factor."""
    name = "tpch"
    spec = os.path.join(ROOT, "examples", "tpch", "pipeline.yaml")
    gold = {"q1_pricing_summary": ("l_returnflag", "l_linestatus"), "q3_shipping_priority": ("l_orderkey",),
            "q5_local_supplier_volume": ("n_name",), "q6_forecast_revenue": (),
            "q10_returned_items": ("c_custkey",)}
    unit = "line items"

    def __init__(self, scale):
        self.scale = scale
        self.label = f"tpch, scale factor {scale:g}"
        self.dir = f"tpch-sf{scale:g}"

    def generate(self, medallion, data):
        files = max(2, min(64, round(8 * self.scale)))
        subprocess.run([medallion, "generate", data, "--dataset", "tpch", "--scale", str(self.scale),
                        "--files", str(files)], check=True, stdout=subprocess.DEVNULL)

    def units(self, data):
        import pyarrow.parquet as pq
        lineitem = os.path.join(data, "lineitem")
        return sum(pq.ParquetFile(os.path.join(lineitem, f)).metadata.num_rows for f in os.listdir(lineitem))

    def peer(self, engine):
        return [os.path.join(HERE, "peers", "tpch.py"), engine]


def generate(medallion, work, workload):
    """The workload's raw data, generated once per scale and kept under `work`."""
    data = os.path.join(work, workload.dir, "data")
    if not os.path.isdir(data):
        workload.generate(medallion, data + ".partial")
        os.rename(data + ".partial", data)
    return data


def warm_cache(data):
    """Reads every input file once, so each engine starts with its input in the page cache:
    otherwise the first engine after the data was generated or evicted pays the disk reads
    for everyone after it."""
    for root, _, files in os.walk(data):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 24):
                    pass


def spec_for(workload, data, out):
    """The workload's spec, reading `data` and writing its lake under `out`."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    spec = open(workload.spec).read().replace("lake: ./lake", f"lake: {out}/lake").replace("path: data/", f"path: {data}/")
    spec_path = os.path.join(out, "pipeline.yaml")
    with open(spec_path, "w") as f:
        f.write(spec)
    return spec_path


def medallion_result(engine, workload, report, out, seconds, peak):
    """A Medallion row from its run report.

    Medallion runs a table as soon as what it reads is committed, so layers overlap; a stage's
    time is its share of the critical path: from the end of the previous layer (or the start)
    to the end of its last table.
    """
    stages = {}
    previous_end = 0
    for layer in ("bronze", "silver", "gold"):
        tables = [t for t in report["tables"] if t["table"].startswith(layer + ".")]
        end = max(t["started_ms"] + t["duration_ms"] for t in tables)
        stages[layer] = round((end - previous_end) / 1000, 3)
        previous_end = end
    gold = {name: os.path.join(out, "lake", "gold", name) for name in workload.gold}
    rows = {t["table"]: t["metrics"]["rows_written"] for t in report["tables"]}
    return {"engine": engine, "format": "delta", "seconds": round(seconds, 3), "peak_bytes": peak,
            "stages": stages, "gold": gold, "rows": rows}


def run_medallion(medallion, workload, data, out, threads, memory):
    """The workload's pipeline, embedded: one process."""
    spec_path = spec_for(workload, data, out)
    warm_cache(data)
    stdout, seconds, peak = measure([medallion, "run", spec_path, "--output", "json",
                                     "--executors", str(threads), "--memory-limit", memory])
    report = json.loads(stdout)
    if not report["succeeded"]:
        raise RuntimeError(f"medallion run failed: {json.dumps(report)[:4000]}")
    return medallion_result("medallion", workload, report, out, seconds, peak)


def run_floor(floor, data, out, threads):
    """The floor of the e-commerce stages (bench/floor): the raw files read, parsed with
    sonic-rs and written as bronze Parquet, then read back, typed and written as silver."""
    shutil.rmtree(out, ignore_errors=True)
    warm_cache(data)
    stdout, seconds, peak = measure([floor, data, out, "--threads", str(threads)])
    shutil.rmtree(out, ignore_errors=True)
    return dict(json.loads(stdout), seconds=round(seconds, 3), peak_bytes=peak)


def new_orders_file(data, path, new, updated, recent):
    """A batch after the generated data: `new` orders with fresh ids, and `updated` existing
    orders again with a later `updated_at` and another status, spread evenly over the newest
    `recent` share of the orders by id (1.0: over all of them)."""
    import glob
    files = sorted(glob.glob(os.path.join(data, "orders", "*.jsonl")))
    lines = []
    for name in files:
        with open(name) as f:
            for line in f:
                try:
                    order = json.loads(line)
                except ValueError:
                    continue
                if isinstance(order, dict) and isinstance(order.get("order_id"), int):
                    lines.append(order)
    lines.sort(key=lambda o: o["order_id"])
    max_id = lines[-1]["order_id"]
    candidates = lines[len(lines) - max(updated, int(len(lines) * recent)):]
    step = max(1, len(candidates) // max(1, updated))
    out = []
    for order in candidates[::step][:updated]:
        order = dict(order, status="delivered", updated_at="2030-01-01T00:00:00Z")
        out.append(order)
    for i in range(new):
        order = dict(lines[i % len(lines)], order_id=max_id + 1 + i,
                     created_at="2030-01-01T00:00:00Z", updated_at="2030-01-01T00:00:00Z")
        out.append(order)
    with open(path, "w") as f:
        for order in out:
            f.write(json.dumps(order) + "\n")


def silver_files(run_dir):
    """How many data files silver.orders has in the lake of a run."""
    from deltalake import DeltaTable
    return len(DeltaTable(os.path.join(run_dir, "lake", "silver", "orders")).file_uris())


def linked_data(data, dest, extra):
    """`data` hard-linked under `dest` (no copy, and no symbolic link for the listing to
    resolve elsewhere), plus the file `extra` in its orders: the same source files under the
    same relative names, so bronze ingests only `extra`."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(data, dest, copy_function=os.link)
    shutil.copy(extra, os.path.join(dest, "orders", "zz-next-batch.jsonl"))


# Updates of recent orders are the common case (an order is paid, shipped and delivered within
# days); updates spread over every order are the worst case for a merge that rewrites files.
INCREMENTAL = {
    # name: (slug, share of new orders, share of updated orders, newest share they fall in).
    "1% new orders (a tenth of them updates of the newest 5%)": ("mixed-recent", 0.009, 0.001, 0.05),
    "1% updates of the newest 5% of orders": ("updates-recent", 0.0, 0.01, 0.05),
    "1% updates spread over all orders": ("updates-spread", 0.0, 0.01, 1.0),
}


def run_incremental(medallion, workload, data, runs, first, reference, threads, memory):
    """Re-runs after a small batch, on a copy of the first run's lake (`first`, its run
    directory): time and memory against the first run, and every gold table against a full
    run over the same files."""
    rows = []
    for name, (slug, new, updated, recent) in INCREMENTAL.items():
        work = os.path.join(runs, "inc-" + slug)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        batch = os.path.join(work, "batch.jsonl")
        new_orders_file(data, batch, int(workload.scale * new), int(workload.scale * updated), recent)
        combined = os.path.join(work, "data")
        linked_data(data, combined, batch)
        lake_dir = os.path.join(work, "incremental")
        shutil.copytree(first, lake_dir)
        spec_path = os.path.join(lake_dir, "pipeline.yaml")
        spec = open(spec_path).read().replace(first + "/lake", lake_dir + "/lake").replace(data + "/", combined + "/")
        with open(spec_path, "w") as f:
            f.write(spec)
        warm_cache(combined)
        stdout, seconds, peak = measure([medallion, "run", spec_path, "--output", "json",
                                         "--executors", str(threads), "--memory-limit", memory])
        report = json.loads(stdout)
        silver = next(t for t in report["tables"] if t["table"] == "silver.orders")
        full = run_medallion(medallion, workload, combined, os.path.join(work, "full"), threads, memory)
        result = medallion_result("medallion", workload, report, lake_dir, seconds, peak)
        problems = compare(workload, full, result) if report["succeeded"] else ["the run failed"]
        rows.append({"scenario": name, "seconds": round(seconds, 3), "peak_bytes": peak,
                     "first_seconds": reference["seconds"], "first_peak_bytes": reference["peak_bytes"],
                     "full_seconds": full["seconds"], "refresh": silver.get("refresh"),
                     "silver_rows_read": silver["metrics"]["rows_read"],
                     "silver_seconds": silver.get("duration_ms", 0) / 1000,
                     "files_rewritten": silver["metrics"].get("files_rewritten", 0),
                     "silver_commit_seconds": silver["metrics"].get("commit_ms", 0) / 1000,
                     "silver_check_seconds": silver["metrics"].get("check_ms", 0) / 1000,
                     "silver_files": silver_files(first),
                     "gold_refresh": ", ".join(sorted({
                         (t.get("refresh") or {}).get("kind", "-")
                         for t in report["tables"] if t["table"].startswith("gold.")})),
                     "agrees": "yes" if not problems else "NO: " + "; ".join(problems)})
        print(f"   {name:<42} {seconds:8.2f} s  {peak / 2**20:8.0f} MiB  "
              f"({seconds / reference['seconds']:.0%} of the first run)  {rows[-1]['agrees']}", file=sys.stderr)
    return rows


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """etcd, a coordinator and `executors` executors on loopback, sharing `threads` task slots
    and `memory` between the executors as embedded mode shares them between its tasks."""

    def __init__(self, medallion, executors, threads, memory_bytes, work, data, out):
        bins = os.path.dirname(medallion)
        self.dir = tempfile.mkdtemp(prefix="medallion-cluster-", dir=work)
        self.procs = []
        self.names = {}
        client, peer = free_port(), free_port()
        self.etcd = self.spawn("etcd", [
            "etcd", "--name", "bench", "--data-dir", os.path.join(self.dir, "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}"])
        etcd = ["--etcd", f"http://127.0.0.1:{client}"]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        # Every port its own: metrics on any free port, Ballista on free ports.
        ports = lambda *flags: [x for f in flags for x in (f, str(free_port()))] + ["--metrics-listen", "127.0.0.1:0"]
        # The coordinator reads the workload's data and writes its lake, nothing else.
        confined = ["--root", os.path.abspath(out), "--allow-sources", os.path.abspath(data),
                    "--allow-lakes", os.path.abspath(out)]
        self.servers = [self.spawn("coordinator", [os.path.join(bins, "medallion-coordinator"),
                                                   "--listen", f"127.0.0.1:{port}", "--ui-listen", "127.0.0.1:0"]
                                                  + ports("--ballista-port") + etcd + confined)]
        slots = max(1, threads // executors)
        for i in range(executors):
            self.servers.append(self.spawn(f"executor-{i}", [
                os.path.join(bins, "medallion-executor"), "--listen", f"127.0.0.1:{free_port()}", "--id", f"executor-{i}",
                "--slots", str(slots), "--memory-limit", str(memory_bytes // executors)]
                + ports("--ballista-port", "--ballista-grpc-port") + etcd))
        try:
            self.wait_until_up(medallion, executors)
        except BaseException:
            self.__exit__()
            raise

    def wait_until_up(self, medallion, executors):
        """Waits until the coordinator lists every executor; a slow, loaded machine gets minutes,
        and a server that exits is reported at once with the end of its log."""
        deadline = time.time() + 300
        while True:
            for name, proc in self.names.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            listed = subprocess.run([medallion, "--coordinator", self.url, "executors", "--output", "json"],
                                    capture_output=True, text=True)
            if listed.returncode == 0 and len(json.loads(listed.stdout)) == executors:
                return
            if time.time() > deadline:
                logs = "\n".join(f"--- {name}: {self.log_tail(name)}" for name in self.names)
                raise RuntimeError(f"the cluster did not come up in 300 s: {listed.stdout}{listed.stderr}\n{logs}")
            time.sleep(0.2)

    def log_tail(self, name, lines=20):
        with open(os.path.join(self.dir, f"{name}.log")) as log:
            return "".join(log.readlines()[-lines:])

    def spawn(self, name, cmd):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        self.names[name] = proc
        return proc

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster(*args, attempts=3):
    """A `LocalCluster`, started again when a server found its port taken: ports are picked free
    but not held until the servers bind them, and a server binding port 0 meanwhile (the
    coordinator's UI and metrics) may be given one of them."""
    for attempt in range(attempts):
        try:
            return LocalCluster(*args)
        except RuntimeError as e:
            if "address already in use" not in str(e) or attempt == attempts - 1:
                raise


def run_medallion_cluster(medallion, workload, data, out, executors, threads, memory, work):
    """The workload's pipeline submitted to a local cluster; peak memory counts the client,
    the coordinator and the executors (not etcd)."""
    spec_path = spec_for(workload, data, out)
    with start_cluster(medallion, executors, threads, size_bytes(memory), work, data, out) as cluster:
        warm_cache(data)
        stdout, seconds, peak = measure([medallion, "--coordinator", cluster.url, "submit", spec_path,
                                         "--wait", "--output", "json"],
                                        servers=[p.pid for p in cluster.servers])
    status = json.loads(stdout)
    if status["state"] != "succeeded":
        raise RuntimeError(f"medallion cluster run failed: {json.dumps(status)[:4000]}")
    return medallion_result(f"medallion cluster, {executors} executor{'s' if executors > 1 else ''}",
                            workload, status["report"], out, seconds, peak)


def size_bytes(text):
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "b": 1, "": 1}
    number = text.rstrip("KMGiBkmgib")
    return int(float(number) * units[text[len(number):].lower()])


def run_peer(python, workload, engine, fmt, data, out, threads, limit):
    """A peer's run; past `limit` seconds it is stopped, and if it fails (a crash, out of memory)
    the run goes on: either way its row says so, with no time. The caller deletes `out`."""
    shutil.rmtree(out, ignore_errors=True)
    warm_cache(data)
    try:
        stdout, seconds, peak = measure([python] + workload.peer(engine) + [data, out, "--format", fmt,
                                                                            "--threads", str(threads)], limit=limit)
    except TimeLimit:
        return {"engine": engine, "format": fmt, "seconds": None, "stopped_after": limit, "peak_bytes": None,
                "stages": {}, "gold": None, "agrees": f"stopped after {limit} s"}
    except Failed as e:
        print(e, file=sys.stderr)
        reason = e.reason()
        return {"engine": engine, "format": fmt, "seconds": None, "failed": reason, "peak_bytes": e.peak,
                "stages": {}, "gold": None, "agrees": reason}
    result = json.loads(stdout.strip().splitlines()[-1])
    gold = {name: os.path.join(out, name) for name in workload.gold}
    return {"engine": engine, "format": fmt, "seconds": round(seconds, 3), "peak_bytes": peak,
            "stages": result["stages"], "gold": gold}


def read_table(path, fmt):
    import pyarrow.dataset as ds
    from deltalake import DeltaTable
    if fmt == "delta":
        return DeltaTable(path).to_pyarrow_table().to_pylist()
    return ds.dataset(path, format="parquet").to_table().to_pylist()


def canonical(v):
    if isinstance(v, (datetime.date, datetime.datetime)):
        return v.isoformat()[:10]
    if hasattr(v, "is_finite") or isinstance(v, float):  # Decimal or float
        return float(v)
    return v


def close(a, b):
    """Within 1e-6 relative, or one unit of the sixth decimal place: engines round the
    decimal(.., 6) of a decimal average differently (DataFusion truncates, Spark rounds)."""
    return abs(a - b) <= max(1e-6 * max(abs(a), abs(b)), 1.01e-6)


def compare(workload, reference, result):
    """Differences between Medallion's gold tables and a peer's (empty when they agree)."""
    problems = []
    for name, key in workload.gold.items():
        ours = {tuple(r[k] for k in key): r for r in read_table(reference["gold"][name], "delta")}
        theirs = {tuple(r[k] for k in key): r for r in read_table(result["gold"][name], result["format"])}
        if ours.keys() != theirs.keys():
            problems.append(f"{name}: {len(ours)} vs {len(theirs)} rows, keys differ")
            continue
        for k, row in ours.items():
            for col, v in row.items():
                a, b = canonical(v), canonical(theirs[k].get(col))
                same = close(a, b) if isinstance(a, float) and isinstance(b, (int, float)) else a == b
                if not same:
                    problems.append(f"{name}: {dict(zip(key, k))} {col}: {a!r} vs {b!r}")
                    break
            if len(problems) > 5:
                return problems
    return problems


def machine():
    mem = psutil.virtual_memory().total
    versions = {"python": platform.python_version()}
    for module in ("duckdb", "polars", "pyspark", "deltalake", "pyarrow"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    for peer, (_, module) in PEER_PYTHON.items():
        asked = subprocess.run([peer_python(peer), "-c", f"import {module}; print({module}.__version__)"],
                               capture_output=True, text=True)
        if asked.returncode == 0:
            versions[module] = asked.stdout.strip()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    versions["medallion"] = rev
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "system": platform.platform(),
            "rustc": rustc, "versions": versions}


def row_line(r, base):
    """A row of a workload's table; a peer stopped at its time limit shows the limit, one that
    failed its peak memory until then."""
    st = r["stages"]
    if r.get("failed"):
        return (f"| {r['engine']} | {r['format']} | - | - | - | - | - | {r['peak_bytes'] / 2**20:,.0f} | - | "
                f"{r['failed']} |")
    if r["seconds"] is None:
        limit = r["stopped_after"]
        return (f"| {r['engine']} | {r['format']} | - | - | - | > {limit:.0f} | < {r['units'] / limit:,.0f} | - | "
                f"> {limit / base:.2f}x | {r['agrees']} |")
    return (f"| {r['engine']} | {r['format']} | {st.get('bronze', 0):.2f} | {st.get('silver', 0):.2f} | "
            f"{st.get('gold', 0):.2f} | {r['seconds']:.2f} | {r['units'] / r['seconds']:,.0f} | "
            f"{r['peak_bytes'] / 2**20:,.0f} | {r['seconds'] / base:.2f}x | {r.get('agrees', 'reference')} |")


def scaling_series(results):
    """The e-commerce rows by (engine, format), each a list of (orders, row) by scale."""
    series = {}
    for rows in results.values():
        for r in rows:
            if r["unit"] == "orders":
                series.setdefault((r["engine"], r["format"]), []).append((r["units"], r))
    return series


def scaling_lines(results, pool):
    """How each engine's time per million orders and peak memory grow with the orders."""
    series = scaling_series(results)
    scales = sorted({n for points in series.values() for n, _ in points})
    if len(scales) < 2:
        return []
    head = " | ".join(f"{n / 1e6:g}M" for n in scales)
    align = "|".join("---:" for _ in scales)
    lines = ["## How cost grows with the data (ecommerce)", "",
             "Seconds per million orders (flat: linear cost; rising: each order costs more as the data "
             "grows), then peak memory; `-`: not run at that scale, `>`: stopped at the time limit, `failed`: crashed "
             "or killed (the workload's table says why). "
             f"Medallion's memory pool is {pool / 2**20:,.0f} MiB (`--memory-limit`); its peak is also "
             "given as a multiple of the pool.", ""]

    def table(cell):
        """One row per engine, one `cell(row, orders)` per scale; `-` where it did not run."""
        rows = [f"| engine | writes | {head} |", f"|---|---|{align}|"]
        for (engine, fmt), points in series.items():
            by_scale = dict(points)
            cells = ("-" if by_scale.get(n) is None else cell(by_scale[n], n) for n in scales)
            rows.append(f"| {engine} | {fmt} | " + " | ".join(cells) + " |")
        return rows

    def seconds(r, n):
        if r.get("failed"):
            return "failed"
        if r["seconds"] is None:
            return f"> {r['stopped_after'] / (n / 1e6):.2f}"
        return f"{r['seconds'] / (n / 1e6):.2f}"

    def memory(r, n):
        if r["peak_bytes"] is None:
            return "-"
        mib = f"{r['peak_bytes'] / 2**20:,.0f} MiB"
        if r.get("failed"):
            return f"{mib} when it failed"
        return f"{mib} ({r['peak_bytes'] / pool:.2f}x pool)" if r["engine"] == "medallion" else mib

    return lines + table(seconds) + [""] + table(memory) + [""]


def floor_lines(results, floors):
    """Medallion's bronze and silver time as a multiple of the floor's, per scale."""
    if not floors:
        return []
    lines = ["## Against the floor (ecommerce)", "",
             "The floor (`bench/floor`, Rust, same threads): bronze reads each raw file's bytes, parses "
             "every line with sonic-rs (SIMD JSON) into Arrow text columns plus bronze's metadata "
             "columns and writes them as Parquet encoded as Medallion encodes; silver reads that "
             "Parquet back, casts the text to silver's types and writes Parquet again. No schema "
             "inference, checks, dedupe, merge or Delta log. `parts`: thread-seconds in each part. "
             "Medallion's stage times are its shares of the critical path (its layers overlap).", "",
             "| workload | stage | floor s | floor parts (thread s) | medallion s | medallion / floor |",
             "|---|---|---:|---|---:|---:|"]
    for label, floor in floors.items():
        ours = next(r for r in results[label] if r["engine"] == "medallion")
        for stage in ("bronze", "silver"):
            parts = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in floor["parts"][stage].items())
            lines.append(f"| {label} | {stage} | {floor['stages'][stage]:.2f} | {parts} | "
                         f"{ours['stages'][stage]:.2f} | {ours['stages'][stage] / floor['stages'][stage]:.2f}x |")
        both_floor = floor["stages"]["bronze"] + floor["stages"]["silver"]
        both_ours = ours["stages"]["bronze"] + ours["stages"]["silver"]
        lines.append(f"| {label} | bronze + silver | {both_floor:.2f} | | {both_ours:.2f} | "
                     f"{both_ours / both_floor:.2f}x |")
    return lines + [""]


def draw_scaling(results, path, pool):
    """Seconds and peak memory against orders, one line per engine, log-log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(14, 4.5))
    # Twenty distinct colours: a dozen engines must not share one.
    colours = iter(plt.get_cmap("tab20").colors)
    for (engine, fmt), points in scaling_series(results).items():
        done = [(n, r) for n, r in points if r["seconds"] is not None]
        if not done:
            continue
        style = {"linewidth": 3, "color": "#d4af37"} if engine == "medallion" else {"linewidth": 1, "color": next(colours)}
        label = f"{engine} ({fmt})"
        time_ax.plot([n for n, _ in done], [r["seconds"] for _, r in done], marker="o", label=label, **style)
        memory_ax.plot([n for n, _ in done], [r["peak_bytes"] / 2**20 for _, r in done], marker="o", label=label, **style)
    memory_ax.axhline(pool / 2**20, color="#d4af37", linestyle="--", linewidth=1, label="medallion's pool")
    for ax, title, unit in ((time_ax, "wall time", "seconds"), (memory_ax, "peak memory", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("orders")
        ax.set_ylabel(unit)
        ax.set_title(f"ecommerce: {title} against orders")
        ax.grid(True, which="both", alpha=0.3)
    # Beside the plots, where it hides no line.
    memory_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(results, incremental, floors, info, out_dir, stamp, memory):
    """Writes the markdown report and the chart; returns the report's path."""
    os.makedirs(out_dir, exist_ok=True)
    lines = [f"# Benchmark {stamp}", "",
             f"Machine: {info['cpus']} CPUs, {info['memory_gib']} GiB, {info['system']}; {info['rustc']}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".",
             "Every engine: 2 threads, the same files; times are wall clock of the whole command, "
             "peak memory is the largest resident set of the process tree. "
             f"Medallion runs embedded with `--executors 2 --memory-limit {memory}`; its layers "
             "overlap, so its stage times are shares of the critical path. `medallion cluster, N "
             "executors`: the same spec submitted (`medallion submit --wait`) to a coordinator and N "
             "executors on this machine (etcd, gRPC on loopback), the 2 task slots and the memory "
             "limit split between the executors; its time is the submit's, its memory that of the "
             "client, coordinator and executors (not etcd).", ""]
    for workload, rows in results.items():
        lines += [f"## {workload}", "",
                  f"| engine | writes | bronze s | silver s | gold s | total s | {rows[0]['unit']}/s | peak MiB | vs Medallion | gold equal |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        base = next(r for r in rows if r["engine"] == "medallion")["seconds"]
        lines += [row_line(r, base) for r in rows] + [""]
    lines += ["`vs Medallion`: the engine's total time divided by Medallion's (above 1: Medallion is faster).", ""]
    lines += floor_lines(results, floors)
    lines += scaling_lines(results, size_bytes(memory))
    if incremental:
        lines += ["", "## Re-runs after a small batch (incremental silver and gold)", "",
                  "The first run's lake, copied, then one more file of orders and `medallion run` again: "
                  "bronze ingests the file, silver reads only the rows committed since its last run and "
                  "merges them (`silver s`: silver.orders, merge included; `commit s`: the coordinator's "
                  "checks, merge and Delta commit after the tasks), gold recomputes the groups "
                  "the changed orders touched where it can. `gold equal`: every gold table against a "
                  "full run over the same files, in a fresh lake.", "",
                  "| workload | batch | re-run s | % of first run | peak MiB | % of first run's peak "
                  "| silver refresh | silver rows read | silver s | of it commit s | of that checks s "
                  "| files rewritten | gold refresh | full run s | gold equal |",
                  "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---|"]
        for workload, rows in incremental.items():
            for r in rows:
                refresh = (r["refresh"] or {}).get("kind", "-")
                lines.append(
                    f"| {workload} | {r['scenario']} | {r['seconds']:.2f} | "
                    f"{100 * r['seconds'] / r['first_seconds']:.0f}% | {r['peak_bytes'] / 2**20:,.0f} | "
                    f"{100 * r['peak_bytes'] / r['first_peak_bytes']:.0f}% | {refresh} | "
                    f"{r['silver_rows_read']:,} | {r['silver_seconds']:.2f} | {r['silver_commit_seconds']:.2f} | "
                    f"{r['silver_check_seconds']:.2f} | "
                    f"{r['files_rewritten']} of {r['silver_files']} | {r['gold_refresh']} | "
                    f"{r['full_seconds']:.2f} | {r['agrees']} |")
    path = os.path.join(out_dir, f"{stamp}.md")
    chart = os.path.join(out_dir, f"{stamp}.png")
    draw(results, chart)
    lines += ["", f"![total time per engine]({os.path.basename(chart)})", ""]
    if len({n for points in scaling_series(results).values() for n, _ in points}) > 1:
        scaling = os.path.join(out_dir, f"{stamp}-scaling.png")
        draw_scaling(results, scaling, size_bytes(memory))
        lines += [f"![time and memory against orders]({os.path.basename(scaling)})", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out_dir, f"{stamp}.json"), "w") as f:
        json.dump({"machine": info, "results": results, "incremental": incremental, "floor": floors}, f,
                  indent=1, default=str)
    return path


def draw(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    workloads = list(results)
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        rows = [r for r in results[workload] if r["seconds"] is not None]
        labels = [f"{r['engine']}\n{r['format']}" for r in rows]
        bottom = [0.0] * len(rows)
        for stage, color in (("bronze", "#cd7f32"), ("silver", "#a8a9ad"), ("gold", "#d4af37")):
            values = [r["stages"].get(stage, 0) for r in rows]
            ax.bar(labels, values, bottom=bottom, color=color, label=stage)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.scatter(labels, [r["seconds"] for r in rows], color="black", marker="_", s=400,
                   label="total (with start-up)", zorder=3)
        ax.set_title(workload)
        ax.set_ylabel("seconds")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def show(r):
    """A result as it comes, on stderr."""
    seconds = f"{r['seconds']:8.2f} s" if r["seconds"] is not None else "       - s"
    print(f"   {r['engine']:<10} {r['format']:<8} {seconds}  {(r['peak_bytes'] or 0) / 2**20:8.0f} MiB  "
          f"{r.get('agrees', '')}", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--medallion", required=True, help="the medallion binary (a release build)")
    p.add_argument("--workloads", default="ecommerce,tpch")
    p.add_argument("--scales", default="1000000,5000000", help="orders per ecommerce run")
    p.add_argument("--tpch-scales", default="1", help="TPC-H scale factors")
    p.add_argument("--peers", default="duckdb,polars,pyspark,sail,daft")
    p.add_argument("--cluster", default="1,2", help="Medallion local clusters: executors per cluster ('' for none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory", default="1GiB", help="Medallion's --memory-limit (queries spill beyond it)")
    p.add_argument("--work", default=os.path.expanduser("~/.cache/medallion-bench"), help="data and lakes")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="where the report goes")
    p.add_argument("--smoke", action="store_true", help="a tiny run to check the harness itself")
    p.add_argument("--no-incremental", dest="incremental", action="store_false",
                   help="skip the re-runs after a small batch (ecommerce)")
    p.add_argument("--extras-up-to", type=int, default=5_000_000,
                   help="the local clusters and the re-runs only at e-commerce scales up to this many orders "
                        "(TPC-H: up to scale factor 1)")
    p.add_argument("--time-limit", type=float, default=900, help="seconds a peer may take before it is stopped")
    p.add_argument("--floor", help="the medallion-floor binary (default: beside --medallion; '' for none)")
    args = p.parse_args()
    if args.floor is None:
        args.floor = os.path.join(os.path.dirname(args.medallion), "medallion-floor")
    if args.smoke:
        args.scales, args.tpch_scales, args.extras_up_to = "1500,3000", "0.01", 1500
        args.work = tempfile.mkdtemp(prefix="medallion-bench-")
    info = machine()
    workloads = []
    if "ecommerce" in args.workloads.split(","):
        workloads += [Ecommerce(int(s)) for s in args.scales.split(",")]
    if "tpch" in args.workloads.split(","):
        workloads += [Tpch(float(s)) for s in args.tpch_scales.split(",")]
    results, incremental, floors = {}, {}, {}
    for workload in workloads:
        data = generate(args.medallion, args.work, workload)
        units = workload.units(data)
        runs = os.path.join(args.work, workload.dir, "runs")
        print(f"== {workload.label}", file=sys.stderr)
        first = os.path.join(runs, "medallion")
        reference = run_medallion(args.medallion, workload, data, first, args.threads, args.memory)
        show(reference)
        rows = [reference]
        extras = workload.scale <= (args.extras_up_to if workload.name == "ecommerce" else 1)
        for executors in (int(n) for n in args.cluster.split(",") if n and extras):
            r = run_medallion_cluster(args.medallion, workload, data, os.path.join(runs, f"cluster-{executors}"),
                                      executors, args.threads, args.memory, args.work)
            problems = compare(workload, reference, r)
            r["agrees"] = "yes" if not problems else "NO: " + "; ".join(problems)
            show(r)
            rows.append(r)
        if args.floor and workload.name == "ecommerce":
            floor = run_floor(args.floor, data, os.path.join(runs, "floor"), args.threads)
            if floor["rows"] != reference["rows"]["bronze.orders"]:
                raise RuntimeError(f"the floor read {floor['rows']} orders, Medallion's bronze "
                                   f"{reference['rows']['bronze.orders']}")
            floors[workload.label] = floor
            print(f"   floor      parquet  {floor['seconds']:8.2f} s", file=sys.stderr)
        if args.incremental and extras and workload.name == "ecommerce":
            incremental[workload.label] = run_incremental(args.medallion, workload, data, runs, first,
                                                          reference, args.threads, args.memory)
        for peer in (p for p in args.peers.split(",") if p):
            for engine, fmt in PEERS[peer]:
                out = os.path.join(runs, f"{engine}-{fmt}")
                r = run_peer(peer_python(peer), workload, engine, fmt, data, out, args.threads, args.time_limit)
                if r["seconds"] is not None:
                    problems = compare(workload, reference, r)
                    r["agrees"] = "yes" if not problems else "NO: " + "; ".join(problems)
                # The lakes are compared; at 50M orders each takes gigabytes.
                shutil.rmtree(out, ignore_errors=True)
                show(r)
                rows.append(r)
        for r in rows:
            r["units"], r["unit"] = units, workload.unit
        results[workload.label] = rows
        shutil.rmtree(runs, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")
    path = report(results, incremental, floors, info, args.out, "smoke" if args.smoke else stamp, args.memory)
    if args.smoke:
        shutil.rmtree(args.work, ignore_errors=True)
    print(path)
    disagreeing = [r for rows in list(results.values()) + list(incremental.values()) for r in rows
                   if str(r.get("agrees", "yes")).startswith("NO")]
    sys.exit(1 if disagreeing else 0)


if __name__ == "__main__":
    main()
