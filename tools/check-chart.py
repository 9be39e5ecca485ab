"""Checks charts/shakenfist; run by tools/check-chart.sh (which provides helm,
kubernetes-validate and PyYAML).

1. `helm lint --strict` with the default values, the agent on, and TLS on.
2. Every rendering validates against Kubernetes 1.33's schemas (kubernetes-validate
   --strict).
3. Bad values are refused with the field named (values.schema.json and `required`).
4. Every SHAKENFIST_* variable a container sets is one its binary reads (its --help).
5. The control plane boots on this machine from what the chart renders: the schema
   job's containers (twice: install, then an upgrade's rerun), both sf-database
   replicas, sf-api and sf-cluster run with the rendered commands and environment
   (secrets read from the rendered Secret), only addresses and ports rewritten to
   127.0.0.1. sf-api must answer /readyz, accept the Secret's system key on /auth,
   and sf-cluster must take the cluster lease.

Every process runs on 127.0.0.1 against the private MariaDB of SF_TEST_MARIADB_PORT, is
bounded in time, and is killed on exit.
"""

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

NS = "sf-check"
RELEASE = "chk"
PROCS = []


def fail(msg):
    print(f"check-chart: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def helm_template(chart, sets):
    args = ["helm", "template", RELEASE, chart, "-n", NS]
    for s in sets:
        args += ["--set", s]
    out = run(args)
    if out.returncode != 0:
        fail(f"helm template {sets}: {out.stderr.strip()}")
    return out.stdout


def docs(rendered):
    return [d for d in yaml.safe_load_all(rendered) if d]


BASE = ["mariadb.host=db.example.internal"]
VARIANTS = {
    "defaults": BASE,
    "agent": BASE + ["agent.enabled=true", "agent.meshNic=bond0", "agent.metricsTls=true",
                     "agent.networkNode.enabled=true", "agent.networkNode.egressNic=eth1"],
    "tls": BASE + ["api.tls.existingSecret=api-tls", "database.replicas=3",
                   "mariadb.tls.mode=verify-identity", "mariadb.tls.caSecret=mariadb-ca"],
}


def lint_and_validate(chart):
    for name, sets in VARIANTS.items():
        args = ["helm", "lint", "--strict", chart]
        for s in sets:
            args += ["--set", s]
        out = run(args)
        if out.returncode != 0:
            fail(f"helm lint ({name}): {out.stdout}{out.stderr}")
        rendered = helm_template(chart, sets)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(rendered)
        out = run(["kubernetes-validate", "-k", "1.33.0", "--strict", f.name])
        os.unlink(f.name)
        if out.returncode != 0 or "ERROR" in out.stdout + out.stderr:
            fail(f"kubernetes-validate ({name}): {out.stdout}{out.stderr}")
        print(f"check-chart: {name}: lint and Kubernetes 1.33 schemas pass")


def refusals(chart):
    cases = [
        ([], "mariadb.host is required"),
        (BASE + ["database.replicas=0"], "replicas"),
        (BASE + ["database.port=70000"], "port"),
        (BASE + ["secrets.systemKey=short"], "systemKey"),
        (BASE + ["secrets.mariadbGatewaySecret=short"], "mariadbGatewaySecret"),
        (BASE + ["floatingNetwork=not-a-cidr"], "floatingNetwork"),
        (BASE + ["database.extraEnv.lower=1"], "extraEnv"),
        (BASE + ["api.tls.selfSigned=true"], "selfSigned"),
        (BASE + ["secrets.authSecretSeed=short"], "authSecretSeed"),
        (BASE + ["database.metricsPort=13005"], "database.metricsPort"),
        (BASE + ["imaginary=1"], "imaginary"),
        (BASE + ["agent.extraEnv.SHAKENFIST_ARTIFACT_MAX_BYTES=68719476736"], "extraEnv"),
        (BASE + ["agent.networkNode.nodeSelector=null"], "nodeSelector"),
        (BASE + ["mariadb.tls.mode=verify_full"], "mode"),
    ]
    for sets, needle in cases:
        args = ["helm", "template", RELEASE, chart]
        for s in sets:
            args += ["--set", s]
        out = run(args)
        if out.returncode == 0:
            fail(f"helm template accepted {sets}")
        if needle not in out.stderr:
            fail(f"the refusal of {sets} does not name {needle!r}: {out.stderr.strip()}")
    print(f"check-chart: {len(cases)} bad values refused, each naming its field")


def network_node_split(chart):
    """With a network node, exactly one DaemonSet is the network role, and the other
    keeps off the network node's label."""
    objs = docs(helm_template(chart, VARIANTS["agent"]))
    sets = [o for o in objs if o["kind"] == "DaemonSet"]
    if len(sets) != 2:
        fail(f"agent.networkNode.enabled renders {len(sets)} DaemonSets, not 2")
    roles = {}
    for ds in sets:
        pod = ds["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        roles[env["SHAKENFIST_NODE_IS_NETWORK_NODE"]] = (pod, env)
    if set(roles) != {"true", "false"}:
        fail(f"the agents' network roles are {sorted(roles)}")
    net, env = roles["true"]
    if net["nodeSelector"] != {"shakenfist.io/network-node": "true"} or env.get("SHAKENFIST_NODE_EGRESS_NIC") != "eth1":
        fail(f"the network agent: {net.get('nodeSelector')}, egress {env.get('SHAKENFIST_NODE_EGRESS_NIC')}")
    hyp, env = roles["false"]
    terms = hyp["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    if terms != [{"matchExpressions": [{"key": "shakenfist.io/network-node", "operator": "NotIn", "values": ["true"]}]}]:
        fail(f"the hypervisors' agents are not kept off the network node: {terms}")
    if "SHAKENFIST_NODE_EGRESS_NIC" in env:
        fail("a hypervisor agent got the egress NIC")
    print("check-chart: the network node's agent is its own DaemonSet; the others keep off its node")


def long_release_names_fit(chart):
    """A StatefulSet's pods carry controller-revision-hash = <name>-<10 chars>, a label
    value (at most 63): its name must stay within 52 even for a long release name."""
    release = "a-very-long-release-name-for-a-production-zone-eu-w"
    out = run(["helm", "template", release, chart, "-n", NS, "--set", BASE[0]])
    if out.returncode != 0:
        fail(f"helm template with release {release}: {out.stderr}")
    for o in docs(out.stdout):
        if o["kind"] == "StatefulSet" and len(o["metadata"]["name"]) > 52:
            fail(f"StatefulSet {o['metadata']['name']} is {len(o['metadata']['name'])} characters")
        if len(o["metadata"]["name"]) > 63:
            fail(f"{o['kind']} {o['metadata']['name']} is longer than 63 characters")
    print("check-chart: names of a long release fit Kubernetes' limits")


def containers(objs):
    """(object, container) for every container and init container."""
    for o in objs:
        spec = o.get("spec", {})
        pod = spec.get("template", {}).get("spec") if "template" in spec else None
        if not pod:
            continue
        for c in pod.get("initContainers", []) + pod.get("containers", []):
            yield o, c


def env_names_are_read(objs, bindir):
    helps = {}
    checked = 0
    for o, c in containers(objs):
        cmd = c["command"]
        key = tuple(cmd[:2]) if cmd[0] == "sf-ctl" else (cmd[0],)
        if key not in helps:
            # sf-ctl's MariaDB options are global: its own help lists them.
            names = set()
            for k in {key[:1], key}:
                out = run([os.path.join(bindir, k[0]), *k[1:], "--help"])
                if out.returncode != 0:
                    fail(f"{' '.join(k)} --help: {out.stderr}")
                names |= set(re.findall(r"\[env: ([A-Z0-9_]+)", out.stdout))
            helps[key] = names
        for e in c.get("env", []):
            if e["name"].startswith("SHAKENFIST_") and e["name"] not in helps[key]:
                fail(f"{o['kind']}/{o['metadata']['name']} sets {e['name']}, which {' '.join(key)} does not read")
            checked += 1
    print(f"check-chart: {checked} environment variables, each read by its binary")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            fail(f"{what} exited ({proc.returncode}): {read_log(proc)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    fail(f"{what} did not listen on {port} in {deadline}s: {read_log(proc)}")


def read_log(proc):
    try:
        with open(proc.log_path) as f:
            return f.read()[-3000:]
    except OSError:
        return ""


def http(url, body=None, deadline=30):
    """GET (or POST JSON) with retries until the deadline: (status, text)."""
    end = time.time() + deadline
    last = None
    while time.time() < end:
        try:
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            last = e
            time.sleep(0.3)
    fail(f"{url}: no answer in {deadline}s ({last})")


def env_of(container, secret, overrides):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for e in container.get("env", []):
        name = e["name"]
        if "value" in e:
            env[name] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            if ref["name"] != secret["metadata"]["name"]:
                fail(f"{name} reads Secret {ref['name']}, not the chart's")
            env[name] = base64.b64decode(secret["data"][ref["key"]]).decode()
        elif "fieldRef" in e.get("valueFrom", {}):
            env[name] = {"metadata.name": "pod-0", "spec.nodeName": "node-0"}.get(
                e["valueFrom"]["fieldRef"]["fieldPath"], "127.0.0.1")
        else:
            fail(f"{name}: an env source this check does not know")
    env.update(overrides)
    return env


def start(bindir, container, env, logdir, name):
    log_path = os.path.join(logdir, f"{name}.log")
    log = open(log_path, "w")
    proc = subprocess.Popen([os.path.join(bindir, container["command"][0]), *container["command"][1:]],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_path = log_path
    PROCS.append(proc)
    return proc


def boot(chart, bindir):
    port = os.environ.get("SF_TEST_MARIADB_PORT")
    if not port:
        fail("SF_TEST_MARIADB_PORT is not set (tools/test.sh starts a private MariaDB)")
    database = f"chart_check_{os.getpid()}"
    out = run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "-uroot",
               "-e", f"CREATE DATABASE {database}"])
    if out.returncode != 0:
        fail(f"create database: {out.stderr}")
    objs = docs(helm_template(chart, [
        "mariadb.host=127.0.0.1", f"mariadb.port={port}", "mariadb.user=root",
        f"mariadb.database={database}", "logFormat=text"]))
    by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    secret = by[("Secret", f"{RELEASE}-shakenfist-secrets")]
    job = by[("Job", f"{RELEASE}-shakenfist-schema")]
    sts = by[("StatefulSet", f"{RELEASE}-shakenfist-database")]
    api = by[("Deployment", f"{RELEASE}-shakenfist-api")]
    cluster = by[("Deployment", f"{RELEASE}-shakenfist-cluster")]
    logdir = tempfile.mkdtemp(prefix="sf-chart-check.")

    # The schema job, as at install and again as at an upgrade.
    pod = job["spec"]["template"]["spec"]
    for attempt in ("install", "upgrade"):
        for c in pod["initContainers"] + pod["containers"]:
            out = run([os.path.join(bindir, c["command"][0]), *c["command"][1:]],
                      env=env_of(c, secret, {}))
            if out.returncode != 0:
                fail(f"schema job ({attempt}) {c['name']}: exit {out.returncode}: {out.stdout}{out.stderr}")
            if c["name"] == "bootstrap-system-key" and out.stdout.strip():
                fail("bootstrap-system-key printed the Secret's key")
    print("check-chart: the schema job ran at install and again at upgrade")

    # The gateways: each replica on a port of its own; their DNS names map to them.
    replicas = sts["spec"]["replicas"]
    gw = sts["spec"]["template"]["spec"]["containers"][0]
    grpc_ports = [free_port() for _ in range(replicas)]
    hosts = []
    for i, p in enumerate(grpc_ports):
        metrics = free_port()
        proc = start(bindir, gw, env_of(gw, secret, {
            "SHAKENFIST_MARIADB_GATEWAY_LISTEN": "127.0.0.1",
            "SHAKENFIST_MARIADB_GATEWAY_PORT": str(p),
            "SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT": str(metrics)}), logdir, f"sf-database-{i}")
        wait_port(p, f"sf-database-{i}", proc)
        status, text = http(f"http://127.0.0.1:{metrics}/healthz")
        if status != 200:
            fail(f"sf-database-{i} /healthz: {status} {text}")
        hosts.append(f"127.0.0.1:{p}")
    api_c = api["spec"]["template"]["spec"]["containers"][0]
    rendered_hosts = env_of(api_c, secret, {})["SHAKENFIST_MARIADB_GATEWAY_HOSTS"].split(",")
    if len(rendered_hosts) != replicas:
        fail(f"MARIADB_GATEWAY_HOSTS lists {rendered_hosts}, not the {replicas} replicas")
    local_hosts = ",".join(hosts)

    api_port = free_port()
    proc = start(bindir, api_c, env_of(api_c, secret, {
        "SHAKENFIST_API_LISTEN": "127.0.0.1", "SHAKENFIST_API_PORT": str(api_port),
        "SHAKENFIST_MARIADB_GATEWAY_HOSTS": local_hosts}), logdir, "sf-api")
    wait_port(api_port, "sf-api", proc)
    status, text = http(f"http://127.0.0.1:{api_port}/readyz")
    if status != 200:
        fail(f"sf-api /readyz: {status} {text}")
    key = base64.b64decode(secret["data"]["system-key"]).decode()
    status, text = http(f"http://127.0.0.1:{api_port}/auth", {"namespace": "system", "key": key})
    if status != 200 or "token" not in text:
        fail(f"sf-api refused the Secret's system key: {status} {text}")
    status, _ = http(f"http://127.0.0.1:{api_port}/auth", {"namespace": "system", "key": key + "x"})
    if status == 200:
        fail("sf-api accepted a wrong system key")
    print(f"check-chart: {replicas} gateways and sf-api up; the Secret's system key logs in")

    cl = cluster["spec"]["template"]["spec"]["containers"][0]
    metrics = free_port()
    proc = start(bindir, cl, env_of(cl, secret, {
        "SHAKENFIST_API_URL": f"http://127.0.0.1:{api_port}",
        "SHAKENFIST_MARIADB_GATEWAY_HOSTS": local_hosts,
        "SHAKENFIST_CLUSTER_METRICS_LISTEN": "127.0.0.1",
        "SHAKENFIST_CLUSTER_METRICS_PORT": str(metrics)}), logdir, "sf-cluster")
    wait_port(metrics, "sf-cluster", proc)
    end = time.time() + 60
    while True:
        if proc.poll() is not None:
            fail(f"sf-cluster exited ({proc.returncode}): {read_log(proc)}")
        _, text = http(f"http://127.0.0.1:{metrics}/metrics")
        if re.search(r"^cluster_lease_held 1$", text, re.M):
            break
        if time.time() > end:
            fail(f"sf-cluster did not take the lease in 60s: {read_log(proc)}")
        time.sleep(0.5)
    print("check-chart: sf-cluster authenticated and holds the cluster lease")
    for p in PROCS:
        if p.poll() is not None:
            fail(f"a daemon exited ({p.returncode}): {read_log(p)}")
    run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", "-uroot",
         "-e", f"DROP DATABASE {database}"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chart", required=True)
    ap.add_argument("--bin", required=True)
    args = ap.parse_args()
    try:
        lint_and_validate(args.chart)
        refusals(args.chart)
        network_node_split(args.chart)
        long_release_names_fit(args.chart)
        env_names_are_read(docs(helm_template(args.chart, VARIANTS["agent"] + ["api.tls.existingSecret=t", "mariadb.tls.caSecret=c"])), args.bin)
        boot(args.chart, args.bin)
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.terminate()
        for p in PROCS:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    print("check-chart: ok")


if __name__ == "__main__":
    main()
