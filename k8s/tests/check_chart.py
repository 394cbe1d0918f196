#!/usr/bin/env python3
"""Offline checks of the Helm chart and the plain manifests.

For every value set in k8s/tests/values and every Kubernetes version in KUBE_VERSIONS:
  1. `helm lint --strict` (which also applies values.schema.json);
  2. `helm template`, then every object against the OpenAPI schema of that Kubernetes version
     (kubernetes-validate's strict schemas: unknown fields are errors; an unknown kind or a
     removed apiVersion has no schema and is an error too), every error reported;
  3. cross-object checks the schemas cannot see: selectors that match no pods, Services,
     HPAs, PDBs, NetworkPolicies and ServiceMonitors pointing at nothing, probe ports no
     container exposes, references to ConfigMaps/Secrets/ServiceAccounts that do not exist,
     names that are not DNS-1123;
  4. the Medallion containers' command line and environment against the binaries' own
     `--help` (and the binaries parse the rendered arguments), so the chart cannot drift
     from the code; etcd's flags against `etcd --help`;
  5. with the default values, the certificates the chart makes work: a real etcd started with
     the rendered TLS flags and etcd's Secret answers a client holding the pods' Secret and
     refuses one without a certificate.
k8s/manifests (a kustomize base rendered from the chart) gets the same checks, and must
equal a fresh render. `--self-test` breaks copies of the chart one way each and proves every
check catches its break. `--write-manifests` re-renders k8s/manifests.
"""

import argparse
import functools
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import referencing
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
K8S = os.path.dirname(HERE)
CHART = os.path.join(K8S, "helm", "medallion")
MANIFESTS = os.path.join(K8S, "manifests")
KUBE_VERSIONS = ["1.25.0", "1.30.0", "1.35.0"]
NAMESPACE = "medallion"
RELEASE = "medallion"

# Secrets and claims the value sets name but leave to the user to create.
EXTERNAL = {"Secret": {"lake-credentials", "medallion-lake-credentials", "medallion-api-tokens", "medallion-tls", "medallion-etcd-tls", "medallion-analytics-tls", "medallion-analytics-etcd-tls"}, "PersistentVolumeClaim": {"lake-shared"}}
# Medallion's binaries, by container command.
BINARIES = ("medallion-coordinator", "medallion-executor")
# Debian's etcd (scripts/deps.sh): the flags the chart passes are the same in the image's.
ETCD = shutil.which("etcd") or "/usr/bin/etcd"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IANA_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")


class Tools:
    def __init__(self, helm, kubectl, binaries):
        self.helm, self.kubectl, self.binaries = helm, kubectl, binaries
        home = tempfile.mkdtemp(prefix="helm-home-")
        self.env = dict(os.environ, HELM_CONFIG_HOME=f"{home}/config", HELM_CACHE_HOME=f"{home}/cache",
                        HELM_DATA_HOME=f"{home}/data")

    def run(self, cmd):
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env)


# ---- rendering -------------------------------------------------------------------------

def lint(tools, chart, values, kube):
    out = tools.run([tools.helm, "lint", "--strict", chart, "-f", values, "--kube-version", kube,
                     "--namespace", NAMESPACE])
    if out.returncode != 0:
        return [f"helm lint --strict: {line}" for line in (out.stdout + out.stderr).splitlines()
                if line.startswith(("[ERROR]", "[WARNING]", "- at "))] or ["helm lint --strict failed"]
    return []


def render(tools, chart, values, kube):
    """The chart's objects, or the error of `helm template`."""
    out = tools.run([tools.helm, "template", RELEASE, chart, "-f", values, "--kube-version", kube,
                     "--namespace", NAMESPACE])
    if out.returncode != 0:
        return None, [f"helm template: {out.stderr.strip()}"]
    return [d for d in yaml.safe_load_all(out.stdout) if d], []


# ---- schemas ---------------------------------------------------------------------------

def schema_dir(kube):
    base = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
    major_minor = ".".join(kube.split(".")[:2])
    path = os.path.join(base, f"v{major_minor}.0-local-strict")
    if not os.path.isdir(path):
        raise SystemExit(f"kubernetes-validate has no schemas for Kubernetes {kube}")
    return path


@functools.lru_cache(maxsize=None)
def definitions_registry(kube):
    """The shared definitions every schema of a Kubernetes version refers to (read once)."""
    with open(os.path.join(schema_dir(kube), "_definitions.json")) as f:
        definitions = json.load(f)
    return referencing.Registry().with_resource(
        "/api/_definitions.json", referencing.Resource.from_contents(definitions, default_specification=referencing.jsonschema.DRAFT202012))


@functools.lru_cache(maxsize=None)
def validator_for(path, kube):
    with open(path) as f:
        schema = json.load(f)
    return jsonschema.Draft202012Validator(schema, registry=definitions_registry(kube))


def schema_errors(doc, kube):
    """Every schema error of one object; a kind without a schema is an error."""
    kind, api = doc.get("kind", "?"), doc.get("apiVersion", "?")
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api)
    name = f"{kind.lower()}-{group_version}.json"
    where = f"{kind} {doc.get('metadata', {}).get('name', '?')}"
    local = os.path.join(HERE, "schemas", name)
    path = local if os.path.exists(local) else os.path.join(schema_dir(kube), name)
    if not os.path.exists(path):
        return [f"{where}: no schema for {api} {kind} in Kubernetes {kube} (unknown kind or removed API version)"]
    validator = validator_for(path, kube)
    return [f"{where}: schema ({kube}): at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


# ---- cross-object checks ---------------------------------------------------------------

def name_of(doc):
    return doc.get("metadata", {}).get("name", "")


def pod_template(doc):
    if doc.get("kind") in WORKLOADS:
        return doc.get("spec", {}).get("template", {})
    return None


def selects(selector, labels):
    """Whether a label selector (matchLabels/matchExpressions, or a plain map) selects labels."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pods_selected(docs, selector):
    """The workloads whose pods the selector selects."""
    return [d for d in docs if pod_template(d) is not None
            and selects(selector, pod_template(d).get("metadata", {}).get("labels") or {})]


def container_ports(workload):
    spec = pod_template(workload).get("spec", {})
    return [p for c in spec.get("containers", []) for p in c.get("ports") or []]


def port_exposed(port, ports):
    if isinstance(port, str):
        return any(p.get("name") == port for p in ports)
    return any(p.get("containerPort") == port for p in ports)


def check_names(doc):
    errors, where = [], f"{doc.get('kind')} {name_of(doc)!r}"
    name = name_of(doc)
    label_kinds = ("Service", "Namespace")
    pattern, limit = (DNS1123_LABEL, 63) if doc.get("kind") in label_kinds else (DNS1123_SUBDOMAIN, 253)
    if not pattern.match(name) or len(name) > limit:
        errors.append(f"{where}: name is not a DNS-1123 {'label' if limit == 63 else 'subdomain'}")
    if doc.get("kind") in ("Deployment", "StatefulSet") and len(name) > 52:
        errors.append(f"{where}: name longer than 52 characters leaves no room for pod names")
    labels = dict(doc.get("metadata", {}).get("labels") or {})
    template = pod_template(doc)
    if template is not None:
        labels.update(template.get("metadata", {}).get("labels") or {})
        for c in template.get("spec", {}).get("containers", []) + template.get("spec", {}).get("initContainers", []):
            if not DNS1123_LABEL.match(c.get("name", "")):
                errors.append(f"{where}: container name {c.get('name')!r} is not a DNS-1123 label")
            for p in c.get("ports") or []:
                if "name" in p and (not IANA_SVC_NAME.match(p["name"]) or len(p["name"]) > 15 or "--" in p["name"]):
                    errors.append(f"{where}: port name {p['name']!r} is not an IANA service name")
    for k, v in labels.items():
        if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE.match(v):
            errors.append(f"{where}: label {k}={v!r} is not a valid label value")
    return errors


def check_workload(doc, docs):
    errors, where = [], f"{doc['kind']} {name_of(doc)!r}"
    spec = doc.get("spec", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels") or {}
    if not selects(spec.get("selector"), labels):
        errors.append(f"{where}: selector {spec.get('selector')} does not match its pod labels {labels}")
    pod = spec.get("template", {}).get("spec", {})
    rendered = {(d["kind"], name_of(d)) for d in docs}
    # A cert-manager Certificate makes the Secret it names.
    rendered |= {("Secret", d["spec"]["secretName"]) for d in docs if d["kind"] == "Certificate"}
    account = pod.get("serviceAccountName")
    if account and account != "default" and ("ServiceAccount", account) not in rendered:
        errors.append(f"{where}: ServiceAccount {account!r} does not exist")
    if doc["kind"] == "StatefulSet":
        service = spec.get("serviceName")
        if not any(d["kind"] == "Service" and name_of(d) == service and d["spec"].get("clusterIP") == "None" for d in docs):
            errors.append(f"{where}: serviceName {service!r} is not a headless Service of this release")
    mounts_by_volume = {v["name"]: v for v in pod.get("volumes") or []}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []}

    def exists(kind, name):
        return (kind, name) in rendered or name in EXTERNAL.get(kind, set())

    for volume in mounts_by_volume.values():
        if "configMap" in volume and not exists("ConfigMap", volume["configMap"]["name"]):
            errors.append(f"{where}: volume {volume['name']!r}: ConfigMap {volume['configMap']['name']!r} does not exist")
        if "secret" in volume and not exists("Secret", volume["secret"]["secretName"]):
            errors.append(f"{where}: volume {volume['name']!r}: Secret {volume['secret']['secretName']!r} does not exist")
        if "persistentVolumeClaim" in volume and not exists("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]):
            errors.append(f"{where}: volume {volume['name']!r}: claim {volume['persistentVolumeClaim']['claimName']!r} does not exist")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        cwhere = f"{where} container {c['name']!r}"
        ports = c.get("ports") or []
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(probe_name)
            if not probe:
                continue
            for handler in ("grpc", "httpGet", "tcpSocket"):
                if handler in probe and not port_exposed(probe[handler].get("port"), ports):
                    errors.append(f"{cwhere}: {probe_name} port {probe[handler].get('port')!r} is not a port the container exposes")
        for m in c.get("volumeMounts") or []:
            if m["name"] not in mounts_by_volume and m["name"] not in claims:
                errors.append(f"{cwhere}: volumeMount {m['name']!r} names no volume")
        for source in c.get("envFrom") or []:
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                ref = source.get(key)
                if ref and not ref.get("optional") and not exists(kind, ref["name"]):
                    errors.append(f"{cwhere}: envFrom {kind} {ref['name']!r} does not exist")
        for var in c.get("env") or []:
            ref = var.get("valueFrom") or {}
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                r = ref.get(key)
                if not r or r.get("optional"):
                    continue
                target = next((d for d in docs if d["kind"] == kind and name_of(d) == r["name"]), None)
                if target is None and not exists(kind, r["name"]):
                    errors.append(f"{cwhere}: env {var['name']}: {kind} {r['name']!r} does not exist")
                elif target is not None and r["key"] not in {**(target.get("data") or {}), **(target.get("stringData") or {})}:
                    errors.append(f"{cwhere}: env {var['name']}: {kind} {r['name']!r} has no key {r['key']!r}")
    return errors


def check_service(doc, docs):
    where = f"Service {name_of(doc)!r}"
    selector = doc["spec"].get("selector")
    if not selector:
        return []
    targets = pods_selected(docs, selector)
    if not targets:
        return [f"{where}: selector {selector} matches no pods"]
    errors = []
    for port in doc["spec"].get("ports", []):
        target = port.get("targetPort", port.get("port"))
        for w in targets:
            if not port_exposed(target, container_ports(w)):
                errors.append(f"{where}: port {port.get('name', port['port'])!r} targets {target!r}, "
                              f"which {w['kind']} {name_of(w)!r} does not expose")
    return errors


def check_hpa(doc, docs):
    where = f"HorizontalPodAutoscaler {name_of(doc)!r}"
    ref = doc["spec"]["scaleTargetRef"]
    target = next((d for d in docs if d["kind"] == ref["kind"] and name_of(d) == ref["name"]
                   and d["apiVersion"] == ref.get("apiVersion", d["apiVersion"])), None)
    if target is None:
        return [f"{where}: scaleTargetRef {ref['kind']} {ref['name']!r} does not exist"]
    errors = []
    if "replicas" in target["spec"]:
        errors.append(f"{where}: {ref['kind']} {ref['name']!r} sets replicas, which every upgrade would reset under the HPA")
    for metric in doc["spec"].get("metrics", []):
        resource = metric.get("resource", {}).get("name")
        if metric.get("type") == "Resource" and resource:
            for c in pod_template(target)["spec"]["containers"]:
                if resource not in (c.get("resources", {}).get("requests") or {}):
                    errors.append(f"{where}: scales on {resource} utilization, but container {c['name']!r} requests no {resource}")
    return errors


def check_selector_kind(doc, docs, path):
    selector = doc["spec"].get(path)
    if selector == {} and doc["kind"] == "NetworkPolicy":
        return []
    if not pods_selected(docs, selector):
        return [f"{doc['kind']} {name_of(doc)!r}: {path} {selector} matches no pods"]
    return []


def check_network_policy(doc, docs):
    errors = check_selector_kind(doc, docs, "podSelector")
    targets = pods_selected(docs, doc["spec"].get("podSelector"))
    for rule in doc["spec"].get("ingress", []):
        for port in rule.get("ports", []):
            if targets and not all(port_exposed(port["port"], container_ports(w)) for w in targets):
                errors.append(f"NetworkPolicy {name_of(doc)!r}: port {port['port']!r} is not exposed by every pod it selects")
        for peer in rule.get("from", []):
            if "podSelector" in peer and "namespaceSelector" not in peer and peer["podSelector"] and not pods_selected(docs, peer["podSelector"]):
                errors.append(f"NetworkPolicy {name_of(doc)!r}: peer podSelector {peer['podSelector']} matches no pods")
    return errors


def check_service_monitor(doc, docs):
    where = f"ServiceMonitor {name_of(doc)!r}"
    services = [d for d in docs if d["kind"] == "Service" and selects(doc["spec"]["selector"], d["metadata"].get("labels") or {})]
    if not services:
        return [f"{where}: selector matches no Service"]
    errors = []
    for endpoint in doc["spec"]["endpoints"]:
        for s in services:
            if endpoint.get("port") and endpoint["port"] not in {p.get("name") for p in s["spec"]["ports"]}:
                errors.append(f"{where}: Service {name_of(s)!r} has no port named {endpoint['port']!r}")
    return errors


def cross_object_errors(docs):
    errors = []
    seen = set()
    for doc in docs:
        key = (doc["kind"], name_of(doc))
        if key in seen:
            errors.append(f"{doc['kind']} {name_of(doc)!r}: defined twice")
        seen.add(key)
        errors += check_names(doc)
        if pod_template(doc) is not None:
            errors += check_workload(doc, docs)
        kind = doc["kind"]
        if kind == "Service":
            errors += check_service(doc, docs)
        elif kind == "HorizontalPodAutoscaler":
            errors += check_hpa(doc, docs)
        elif kind == "PodDisruptionBudget":
            errors += check_selector_kind(doc, docs, "selector")
        elif kind == "NetworkPolicy":
            errors += check_network_policy(doc, docs)
        elif kind == "ServiceMonitor":
            errors += check_service_monitor(doc, docs)
    return errors


# ---- the binaries' flags ---------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def help_of(binary):
    """The flags and MEDALLION_* variables a binary's `--help` lists (asked once per binary)."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{binary} --help failed: {out.stderr}")
    flags = set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", out.stdout, re.M))
    env = set(re.findall(r"\[env: ([A-Z0-9_]+)=", out.stdout))
    return flags, env


def expand(text, env):
    """Kubernetes' $(VAR) expansion, with sample values for the downward API."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def flag_errors(tools, docs):
    errors = []
    config_maps = {name_of(d): d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    for w in docs:
        if pod_template(w) is None:
            continue
        for c in pod_template(w)["spec"]["containers"]:
            command = (c.get("command") or [""])[0]
            where = f"{w['kind']} {name_of(w)!r} container {c['name']!r}"
            if command == "etcd":
                known = etcd_flags()
                errors += [f"{where}: etcd has no flag {a.split('=', 1)[0]}" for a in c.get("args") or []
                           if a.startswith("--") and a.split("=", 1)[0] not in known]
                continue
            if command not in BINARIES:
                continue
            binary = tools.binaries[command]
            flags, env_names = help_of(binary)
            env, samples = {}, {"status.podIP": "10.1.2.3", "metadata.name": "pod-0"}
            for source in c.get("envFrom") or []:
                ref = source.get("configMapRef")
                if ref:
                    env.update(config_maps.get(ref["name"], {}))
            for var in c.get("env") or []:
                field = (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
                if "value" in var:
                    unresolved = [m for m in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var["value"]) if m not in env]
                    errors += [f"{where}: env {var['name']} refers to $({m}), defined nowhere before it" for m in unresolved]
                env[var["name"]] = expand(var["value"], env) if "value" in var else samples.get(field, "x")
            for name in env:
                if name.startswith("MEDALLION_") and name not in env_names:
                    errors.append(f"{where}: {command} reads no environment variable {name}")
            args = c.get("args") or []
            for arg in args:
                flag = arg.split("=", 1)[0]
                if arg.startswith("--") and flag not in flags:
                    errors.append(f"{where}: {command} has no flag {flag}")
                for m in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
                    if m not in env:
                        errors.append(f"{where}: argument {arg!r} refers to $({m}), which the container does not define")
            # The binary parses the rendered arguments and environment itself (`--help` last:
            # clap checks every argument before it, then prints help instead of starting).
            parsed = subprocess.run([binary] + [expand(a, env) for a in args] + ["--help"],
                                    capture_output=True, text=True,
                                    env={k: v for k, v in env.items() if k.startswith("MEDALLION_")})
            if parsed.returncode != 0:
                errors.append(f"{where}: {command} rejects the rendered command line: {parsed.stderr.strip()}")
    return errors


@functools.lru_cache(maxsize=None)
def etcd_flags():
    out = subprocess.run([ETCD, "--help"], capture_output=True, text=True)
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", out.stdout + out.stderr, re.M))


# ---- the certificates the chart makes --------------------------------------------------

def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def etcd_tls_errors(docs):
    """Start etcd as the chart does (its TLS flags, the Secret the chart made for it) on
    loopback; a client with the pods' Secret must get an answer, one without must not."""
    import base64
    import ssl
    import time
    import urllib.request
    etcd = next((d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("-etcd")), None)
    if etcd is None:
        return ["etcd TLS: no etcd StatefulSet rendered"]
    container = etcd["spec"]["template"]["spec"]["containers"][0]
    tls_args = [a for a in container["args"] if re.match(r"--(peer-)?(cert-file|key-file|trusted-ca-file|client-cert-auth)", a)]
    if "--client-cert-auth" not in tls_args:
        return ["etcd TLS: the rendered etcd does not ask clients for a certificate (--client-cert-auth)"]
    secrets = {name_of(d): d.get("data") or {} for d in docs if d["kind"] == "Secret"}
    volume = next(v for v in etcd["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")["mountPath"]
    pods_secret = next(name for name in secrets if name.endswith("-tls") and name != volume["secret"]["secretName"])
    work = tempfile.mkdtemp(prefix="etcd-tls-")
    try:
        def files(secret, into):
            os.makedirs(into)
            for key, value in secrets[secret].items():
                with open(os.path.join(into, key), "wb") as f:
                    f.write(base64.b64decode(value))
            return into
        etcd_dir = files(volume["secret"]["secretName"], os.path.join(work, "etcd"))
        pods_dir = files(pods_secret, os.path.join(work, "pods"))
        client, peer = free_port(), free_port()
        args = [a.replace(mount, etcd_dir) for a in tls_args] + [
            "--name=m0", f"--data-dir={work}/data",
            f"--listen-client-urls=https://127.0.0.1:{client}", f"--advertise-client-urls=https://localhost:{client}",
            f"--listen-peer-urls=https://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=https://127.0.0.1:{peer}",
            f"--initial-cluster=m0=https://127.0.0.1:{peer}"]
        with open(os.path.join(work, "etcd.log"), "w") as log:
            server = subprocess.Popen([ETCD] + args, stdout=log, stderr=log)
        try:
            def health(with_cert):
                ctx = ssl.create_default_context(cafile=os.path.join(pods_dir, "ca.crt"))
                if with_cert:
                    ctx.load_cert_chain(os.path.join(pods_dir, "tls.crt"), os.path.join(pods_dir, "tls.key"))
                with urllib.request.urlopen(f"https://localhost:{client}/health", context=ctx, timeout=5) as r:
                    return r.read().decode()
            answer, deadline = None, time.time() + 60
            while answer is None and time.time() < deadline:
                try:
                    answer = health(True)
                except OSError as e:
                    last = e
                    if not isinstance(getattr(e, "reason", e), ConnectionRefusedError):
                        break
                    time.sleep(0.5)
            if answer is None or '"true"' not in answer:
                with open(os.path.join(work, "etcd.log")) as f:
                    return [f"etcd TLS: etcd with the chart's certificate did not answer the pods' certificate: {answer or last}\n{f.read()[-600:]}"]
            try:
                health(False)
                return ["etcd TLS: etcd answered a client without a certificate"]
            except OSError:
                return []
        finally:
            server.kill()
            server.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- the image ------------------------------------------------------------------------

# What gcr.io/distroless/cc-debian12 provides: glibc and libgcc, nothing else.
DISTROLESS_CC_LIBS = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
                      "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2", "libstdc++.so.6"}


def image_errors(tools, dockerfile=os.path.join(os.path.dirname(K8S), "Dockerfile")):
    """The Dockerfile's runtime stage holds every binary the chart runs, and those binaries need
    no shared library the distroless base lacks (the image cannot be built here: no Docker)."""
    errors = []
    with open(dockerfile) as f:
        dockerfile = f.read()
    runtime = dockerfile.rsplit("\nFROM ", 1)[-1]
    if not runtime.startswith("gcr.io/distroless/cc-debian12"):
        errors.append(f"Dockerfile: the runtime stage is not distroless/cc-debian12: {runtime.splitlines()[0]}")
    for binary in ("medallion",) + BINARIES:
        if not re.search(rf"^COPY --from=build .*/out/{binary}( |$)", runtime, re.M):
            errors.append(f"Dockerfile: the runtime stage does not copy {binary}")
    for binary in tools.binaries.values():
        out = subprocess.run(["ldd", binary], capture_output=True, text=True)
        needed = {os.path.basename(line.split()[0]) for line in out.stdout.splitlines() if line.strip()}
        for lib in sorted(needed - DISTROLESS_CC_LIBS):
            errors.append(f"{os.path.basename(binary)} needs {lib}, which the distroless base lacks")
    return errors


# ---- driving ---------------------------------------------------------------------------

def check_docs(tools, docs, kube, label):
    errors = []
    for doc in docs:
        errors += schema_errors(doc, kube)
    errors += cross_object_errors(docs)
    errors += flag_errors(tools, docs)
    return [f"[{label}] {e}" for e in errors]


def value_sets():
    return sorted(glob.glob(os.path.join(HERE, "values", "*.yaml")))


def check_chart(tools, chart, kube_versions=KUBE_VERSIONS, sets=None, live=True):
    """Every check of every value set and version; `live`: start etcd as well (check 5)."""
    errors = []
    for values in sets or value_sets():
        for kube in kube_versions:
            label = f"{os.path.basename(values)} k8s {kube}"
            errors += [f"[{label}] {e}" for e in lint(tools, chart, values, kube)]
            docs, failed = render(tools, chart, values, kube)
            errors += [f"[{label}] {e}" for e in failed]
            if docs is not None:
                errors += check_docs(tools, docs, kube, label)
                if live and os.path.basename(values) == "defaults.yaml" and kube == kube_versions[-1]:
                    errors += [f"[{label}] {e}" for e in etcd_tls_errors(docs)]
    return errors


def render_manifests(tools):
    """The plain manifests: the chart with the defaults of k8s/manifests/values.yaml."""
    docs, failed = render(tools, CHART, os.path.join(MANIFESTS, "values.yaml"), KUBE_VERSIONS[-1])
    if failed:
        raise SystemExit("\n".join(failed))

    def unhelm(node):
        """Helm's own labels do not belong on objects kubectl manages."""
        if isinstance(node, dict):
            labels = node.get("labels")
            if isinstance(labels, dict) and labels.get("app.kubernetes.io/managed-by") == "Helm":
                labels.pop("helm.sh/chart", None)
                labels["app.kubernetes.io/managed-by"] = "kustomize"
            for v in node.values():
                unhelm(v)
        elif isinstance(node, list):
            for v in node:
                unhelm(v)

    unhelm(docs)
    header = ("# Rendered from k8s/helm/medallion with k8s/manifests/values.yaml by\n"
              "# `k8s/tests/check_chart.py --write-manifests`; do not edit by hand.\n")
    return header + yaml.safe_dump_all(docs, sort_keys=False)


def check_manifests(tools):
    errors = []
    with open(os.path.join(MANIFESTS, "medallion.yaml")) as f:
        if f.read() != render_manifests(tools):
            errors.append("k8s/manifests/medallion.yaml differs from the chart: run k8s/tests/check_chart.py --write-manifests")
    out = tools.run([tools.kubectl, "kustomize", MANIFESTS])
    if out.returncode != 0:
        return errors + [f"kubectl kustomize k8s/manifests: {out.stderr.strip()}"]
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for kube in KUBE_VERSIONS:
        errors += check_docs(tools, docs, kube, f"manifests k8s {kube}")
    return errors


# ---- self-test: every check catches a broken copy -------------------------------------

def edit(path, old, new):
    def apply(chart):
        p = os.path.join(chart, path)
        with open(p) as f:
            text = f.read()
        if old not in text:
            raise SystemExit(f"self-test is stale: {old!r} is not in {path}")
        with open(p, "w") as f:
            f.write(text.replace(old, new, 1))
    return apply


def add_values(text):
    def apply(chart):
        with open(os.path.join(chart, "values.yaml"), "a") as f:
            f.write("\n" + text)
    return apply


BREAKS = [
    # (what is broken, how, a part of the error that must name it)
    ("lint: a template that does not parse", edit("templates/configmap.yaml", "{{- include \"medallion.labels\" . | nindent 4 }}", "{{- include \"medallion.labels\" . | nindent 4"), "parse error at (medallion/templates/configmap.yaml"),
    ("values schema: a string where a count belongs", add_values("executor:\n  slots: two\n"), "at '/executor/slots': got string, want integer"),
    ("values schema: an unknown key (a typo)", add_values("coordinater:\n  replicas: 3\n"), "additional properties 'coordinater' not allowed"),
    ("schema: an unknown field", edit("templates/executor.yaml", "revisionHistoryLimit: 5", "revisionHistoryLimit: 5\n  replica: 3"), "schema (1.35.0): at /spec"),
    ("schema: a wrong type", edit("templates/executor.yaml", "revisionHistoryLimit: 5", "revisionHistoryLimit: five"), "schema (1.35.0): at /spec/revisionHistoryLimit"),
    ("schema: a removed API version", edit("templates/executor.yaml", "apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n"), "no schema for policy/v1beta1 PodDisruptionBudget"),
    ("schema: an unknown kind", edit("templates/executor.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgett"), "unknown kind or removed API version"),
    ("cross: a selector that matches no pod labels", edit("templates/executor.yaml", "matchLabels:\n      {{- include \"medallion.componentSelector\" $ctx | nindent 6 }}\n  template:", "matchLabels:\n      tier: executors\n  template:"), "does not match its pod labels"),
    ("cross: a Service pointing at nothing", edit("templates/coordinator.yaml", "  selector:\n    {{- include \"medallion.componentSelector\" $ctx | nindent 4 }}\n  ports:\n    - name: grpc", "  selector:\n    app.kubernetes.io/component: coordinators\n  ports:\n    - name: grpc"), "matches no pods"),
    ("cross: a Service port no container exposes", edit("templates/executor.yaml", "targetPort: metrics", "targetPort: prometheus"), "does not expose"),
    ("cross: an HPA pointing at nothing", edit("templates/executor.yaml", "    kind: Deployment\n    name: {{ include \"medallion.componentName\" $ctx }}", "    kind: Deployment\n    name: {{ include \"medallion.componentName\" $ctx }}-workers"), "scaleTargetRef Deployment"),
    ("cross: a probe port not exposed", edit("templates/coordinator.yaml", "          readinessProbe:\n            {{- include \"medallion.probe\" (dict \"root\" . \"port\" $c.ports.grpc) | nindent 12 }}", "          readinessProbe:\n            {{- include \"medallion.probe\" (dict \"root\" . \"port\" 7000) | nindent 12 }}"), "readinessProbe port 7000"),
    ("cross: a PDB that selects nothing", edit("templates/executor.yaml", "  maxUnavailable: {{ $e.podDisruptionBudget.maxUnavailable }}\n  selector:\n    matchLabels:\n", "  maxUnavailable: {{ $e.podDisruptionBudget.maxUnavailable }}\n  selector:\n    matchLabels:\n      role: worker\n"), "PodDisruptionBudget"),
    ("values schema: a release name that is not DNS-1123", add_values("fullnameOverride: Medallion_Prod\n"), "at '/fullnameOverride'"),
    ("cross: a container name that is not DNS-1123", edit("templates/coordinator.yaml", "- name: coordinator", "- name: Coordinator"), "container name 'Coordinator' is not a DNS-1123 label"),
    ("cross: a port name that is not an IANA service name", edit("templates/executor.yaml", "- name: ballista-grpc\n", "- name: ballista-grpc-port\n"), "port name 'ballista-grpc-port' is not an IANA service name"),
    ("cross: a ConfigMap that does not exist", edit("templates/executor.yaml", "configMapRef:\n                name: {{ include \"medallion.fullname\" . }}", "configMapRef:\n                name: {{ include \"medallion.fullname\" . }}-settings"), "envFrom ConfigMap"),
    ("flags: a flag the binary does not have", edit("templates/executor.yaml", "- --slots=", "- --threads="), "has no flag --threads"),
    ("flags: a flag etcd does not have", edit("charts/etcd/templates/etcd.yaml", "- --peer-client-cert-auth", "- --peer-client-cert-authentication"), "etcd has no flag --peer-client-cert-authentication"),
    ("etcd TLS: etcd's certificate from another CA", edit("templates/tls.yaml", "(include \"medallion.etcdDnsNames\" . | fromYamlArray) 3650 $ca", "(include \"medallion.etcdDnsNames\" . | fromYamlArray) 3650 (genCA \"other\" 1)"), "did not answer the pods' certificate"),
    ("values schema: a port out of range", add_values("coordinator:\n  ports:\n    grpc: 7070\n    metrics: 9470\n    ballista: 70000\n"), "at '/coordinator/ports/ballista'"),
    ("flags: a value the binary cannot parse", edit("templates/coordinator.yaml", "- --ballista-min-input={{ $c.ballistaMinInput }}", "- --ballista-min-input=4 gigs"), "rejects the rendered command line"),
    ("flags: an environment variable the binary does not read", edit("templates/configmap.yaml", "MEDALLION_LOG:", "MEDALLION_LOG_LEVEL:"), "reads no environment variable MEDALLION_LOG_LEVEL"),
]


def self_test(tools):
    """Each break must fail the checks with its own message; the intact chart must pass."""
    failures = []
    values = [os.path.join(HERE, "values", "defaults.yaml")]
    for what, apply, expected in BREAKS:
        work = tempfile.mkdtemp(prefix="chart-broken-")
        chart = os.path.join(work, "medallion")
        shutil.copytree(CHART, chart)
        apply(chart)
        # One Kubernetes version is enough to see a break caught (the full check runs all).
        errors = check_chart(tools, chart, kube_versions=KUBE_VERSIONS[-1:], sets=values,
                             live=what.startswith("etcd TLS"))
        caught = [e for e in errors if expected in e]
        print(f"{'caught' if caught else 'MISSED'}: {what}" + (f"\n    {caught[0]}" if caught else ""))
        if not caught:
            failures.append(f"self-test: {what} was not caught (expected {expected!r}); errors: {errors[:5]}")
        shutil.rmtree(work)
    with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile") as broken:
        with open(os.path.join(os.path.dirname(K8S), "Dockerfile")) as f:
            broken.write(f.read().replace(" /out/medallion-executor /usr/local/bin/", " /usr/local/bin/"))
        broken.flush()
        caught = [e for e in image_errors(tools, broken.name) if "does not copy medallion-executor" in e]
        print(f"{'caught' if caught else 'MISSED'}: image: a binary the image lacks")
        if not caught:
            failures.append("self-test: a Dockerfile without medallion-executor was not caught")
    return failures


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--helm", default=os.environ.get("MEDALLION_HELM", "helm"))
    p.add_argument("--kubectl", default=os.environ.get("MEDALLION_KUBECTL", "kubectl"))
    p.add_argument("--bin-dir", required=True, help="where medallion-coordinator and medallion-executor are")
    p.add_argument("--self-test", action="store_true", help="prove every check fails on a broken copy")
    p.add_argument("--write-manifests", action="store_true", help="re-render k8s/manifests/medallion.yaml")
    args = p.parse_args()
    tools = Tools(args.helm, args.kubectl, {b: os.path.join(args.bin_dir, b) for b in BINARIES})
    if args.write_manifests:
        with open(os.path.join(MANIFESTS, "medallion.yaml"), "w") as f:
            f.write(render_manifests(tools))
        return
    if args.self_test:
        errors = self_test(tools)
    else:
        errors = check_chart(tools, CHART) + check_manifests(tools) + image_errors(tools)
    for e in errors:
        print(e)
    if errors:
        print(f"{len(errors)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print("chart and manifests: all checks passed"
          if not args.self_test else f"self-test: all {len(BREAKS) + 1} breaks caught")


if __name__ == "__main__":
    main()
