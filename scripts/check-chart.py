#!/usr/bin/env python3
"""Checks berth's Helm chart (charts/berth) the way a cluster would see it.

Run with the chart tools' interpreter (scripts/install-deps.sh makes it):

    /opt/berth-tools-venv/bin/python scripts/check-chart.py

For each values case (the chart's defaults, examples/production-values.yaml,
and a quick start that creates its Secrets from values):
  * `helm lint --strict` (Helm's Go SDK through helm_python): no error, no
    warning;
  * render, parse every manifest;
  * validate every core resource against the Kubernetes OpenAPI schemas of
    KUBE_VERSION (kubernetes_validate, strict: an unknown field fails);
  * check ServiceMonitor / PrometheusRule structure by hand and run
    `promtool check rules` on the rule groups (it parses every PromQL
    expression);
  * run the rendered args through the real berth CLI (`berth <args> --help`:
    every flag known, every value parsed), with --berth BIN or
    target/debug/berth;
  * check what berth's image contract and design need: one replica, Recreate,
    read-only root filesystem, non-root uid 10001, the probes on /healthz and
    /readyz, Secrets at mode 0440, the berth.yml ConfigMap and --apps-file
    together or not at all, no secret value in the pod spec, every alert.
Then: `promtool test rules` on charts/berth/tests/alerts-test.yaml against the
rules rendered with the default values (proves each alert fires when it
should and not otherwise), that every key of values.yaml has a comment, and
negative cases that must fail to render (bad values rejected by
values.schema.json or by the templates).

Prints one line per check and a summary; exits 1 on any failure, naming the
template and the reason.
"""

from __future__ import annotations

import argparse
import base64
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

try:
    import helm_python
    import kubernetes_validate.utils as kv
    import yaml
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"check-chart: {e}: run with the chart tools' python "
        "(/opt/berth-tools-venv/bin/python; scripts/install-deps.sh installs it)"
    )

ROOT = Path(__file__).resolve().parent.parent
# Set by main() from --chart (default charts/berth).
CHART = ROOT / "charts" / "berth"
PRODUCTION_VALUES = CHART / "examples" / "production-values.yaml"
ALERT_TESTS = CHART / "tests" / "alerts-test.yaml"
# The berth binary the rendered args are checked against (--berth; default
# target/debug/berth when it exists).
BERTH: Path | None = None

# The newest Kubernetes minor whose schemas kubernetes-validate 1.37.0 (the
# version scripts/install-deps.sh pins) bundles.
KUBE_VERSION = "1.37.0"
RELEASE = "berth"
NAMESPACE = "berth"

ALERTS = {
    "BerthAppOutOfSync",
    "BerthReconcileFailing",
    "BerthHostDown",
    "BerthNoRecentSync",
}

# The quick-start case: every Secret created from values (these strings must
# never appear in the pod spec, only as file paths).
QUICKSTART_SECRETS = {
    "ssh_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nquickstart-fleet-key\n-----END OPENSSH PRIVATE KEY-----\n",
    "known_hosts": "10.0.0.11 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIquickstart\n",
    "git_token": "quickstart-git-token-3f9a",
    "api_token": "quickstart-api-token-77c1",
    "webhook": "quickstart-webhook-secret-d402",
}
QUICKSTART = {
    "git": {
        "repo": "https://git.example.com/ops/deploy.git",
        "tag": "v*",
        "auth": "token",
        "create": True,
        "token": QUICKSTART_SECRETS["git_token"],
        "keys": {"caCert": "ca.pem"},
        "caCert": "-----BEGIN CERTIFICATE-----\nquickstart-private-ca\n-----END CERTIFICATE-----\n",
    },
    "ssh": {
        "create": True,
        "privateKey": QUICKSTART_SECRETS["ssh_key"],
        "knownHosts": QUICKSTART_SECRETS["known_hosts"],
    },
    "apiToken": {"create": True, "value": QUICKSTART_SECRETS["api_token"]},
    "webhookSecret": {"create": True, "value": QUICKSTART_SECRETS["webhook"]},
    "destination": "production",
    "app": "shop",
    "mode": "detect",
    "selfHeal": False,
    "logFormat": "text",
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}

# Values that must NOT render: (name, values, text the error must contain).
NEGATIVE = [
    ("mode: bogus (schema enum)", {"mode": "bogus"}, "/mode"),
    ("logFormat: xml (schema enum)", {"logFormat": "xml"}, "/logFormat"),
    ("replicaCount: 2 (no such value: berth runs one pod)", {"replicaCount": 2}, "replicaCount"),
    ("git.auth: password (schema enum)", {"git": {"auth": "password"}}, "/git/auth"),
    ("interval: soon (schema pattern)", {"interval": "soon"}, "/interval"),
    (
        "apps.shop.policy.mode: yolo (schema enum)",
        {"apps": {"shop": {"policy": {"mode": "yolo"}}}},
        "/apps/shop/policy/mode",
    ),
    (
        "apps.shop.polcy (unknown berth.yml key)",
        {"apps": {"shop": {"polcy": {}}}},
        "polcy",
    ),
    (
        "prometheusRule.rules.hostDown.for: 5 minutes (schema pattern)",
        {"prometheusRule": {"rules": {"hostDown": {"for": "5 minutes"}}}},
        "/prometheusRule/rules/hostDown/for",
    ),
    (
        "notifications.providers.x.type: pager (schema enum)",
        {"notifications": {"providers": {"x": {"type": "pager"}}}},
        "/notifications/providers/x/type",
    ),
    ("externalUrl: berth.example.com (schema pattern)", {"externalUrl": "berth.example.com"}, "/externalUrl"),
    ("git.tag with git.commit (template)", {"git": {"tag": "v*", "commit": "abcdef1"}}, "exclusive"),
    ("ssh.create without a key (template)", {"ssh": {"create": True}}, "ssh.privateKey"),
    (
        "git.auth: ssh with an https URL (template)",
        {"git": {"repo": "https://git.example.com/x.git", "auth": "ssh"}},
        "ssh://",
    ),
]


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"  ok    {what}")

    def fail(self, where: str, why: str) -> None:
        self.failures.append(f"{where}: {why}")
        print(f"  FAIL  {where}: {why}")

    def expect(self, cond: bool, where: str, what: str) -> None:
        if cond:
            self.ok(f"{where}: {what}")
        else:
            self.fail(where, f"expected {what}")


def get(obj: Any, *path: Any) -> Any:
    """obj[p0][p1]…, or None where a step is missing."""
    for p in path:
        if isinstance(obj, dict):
            obj = obj.get(p)
        elif isinstance(obj, list) and isinstance(p, int) and p < len(obj):
            obj = obj[p]
        else:
            return None
    return obj


def promtool() -> str | None:
    return os.environ.get("PROMTOOL") or shutil.which("promtool")


def run_promtool(c: Checker, where: str, args: list[str], cwd: Path) -> bool:
    tool = promtool()
    if tool is None:
        c.fail(where, "promtool not found (install the Debian package prometheus, or set PROMTOOL)")
        return False
    p = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip().replace("\n", "\n        ")
        c.fail(where, f"promtool {' '.join(args)} failed:\n        {out}")
        return False
    c.ok(f"{where}: promtool {args[0]} {args[1]}")
    return True


def lint(c: Checker, case: str, values: dict[str, Any]) -> None:
    where = f"[{case}] helm lint --strict"
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    for m in bad:
        level = {2: "warning", 3: "error"}.get(m["severity"], str(m["severity"]))
        c.fail(f"{where} {m.get('path', '?')}", f"{level}: {m.get('error', '').strip()}")
    for e in report.get("errors", []):
        if not any(e.strip() == m.get("error", "").strip() for m in bad):
            c.fail(where, e.strip())
    if not bad and not report.get("errors"):
        c.ok(f"{where}: no errors or warnings")


def render(values: dict[str, Any]) -> dict[str, str]:
    with helm_python.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def parse(c: Checker, case: str, manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Every rendered object with its template path; NOTES.txt is text."""
    objects: list[tuple[str, dict[str, Any]]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            if "berth" not in text:
                c.fail(f"[{case}] {path}", "NOTES.txt rendered empty")
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as e:
            c.fail(f"[{case}] {path}", f"not valid YAML: {e}")
            continue
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                c.fail(f"[{case}] {path}", f"a document is a {type(doc).__name__}, not an object")
                continue
            objects.append((path, doc))
    c.ok(f"[{case}] rendered and parsed {len(objects)} objects")
    return objects


def validate_core(c: Checker, case: str, path: str, doc: dict[str, Any]) -> None:
    where = f"[{case}] {path} {doc.get('kind')}/{get(doc, 'metadata', 'name')}"
    try:
        kv.validate(doc, KUBE_VERSION, strict=True)
    except kv.ValidationError as e:
        loc = ".".join(str(p) for p in e.path) or "(top)"
        c.fail(where, f"Kubernetes {KUBE_VERSION} schema (strict): at {loc}: {e.message}")
        return
    except kv.SchemaNotFoundError as e:
        c.fail(where, e.message)
        return
    c.ok(f"{where}: valid against Kubernetes {KUBE_VERSION} (strict)")


def check_custom(c: Checker, case: str, path: str, doc: dict[str, Any], tmp: Path) -> None:
    """ServiceMonitor / PrometheusRule: no bundled schema, checked by hand."""
    kind = doc.get("kind")
    where = f"[{case}] {path} {kind}/{get(doc, 'metadata', 'name')}"
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r} is not monitoring.coreos.com/v1")

    def unknown(obj: dict[str, Any], allowed: set[str], what: str) -> None:
        if set(obj) - allowed:
            problems.append(f"unknown {what} keys {sorted(set(obj) - allowed)}")

    unknown(doc, {"apiVersion", "kind", "metadata", "spec"}, "top-level")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name") or not meta.get("namespace"):
        problems.append("metadata needs name and namespace")
    else:
        unknown(meta, {"name", "namespace", "labels", "annotations"}, "metadata")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        problems.append("spec is not an object")
        spec = {}
    if kind == "ServiceMonitor":
        unknown(spec, {"selector", "namespaceSelector", "endpoints", "jobLabel"}, "spec")
        if not isinstance(get(spec, "selector", "matchLabels"), dict):
            problems.append("spec.selector.matchLabels missing")
        eps = spec.get("endpoints")
        if not isinstance(eps, list) or not eps:
            problems.append("spec.endpoints must be a non-empty list")
        else:
            allowed = {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
            for i, ep in enumerate(eps):
                if not isinstance(ep, dict) or set(ep) - allowed:
                    problems.append(f"spec.endpoints[{i}] has unknown keys")
                elif ep.get("port") != "http" or ep.get("path") != "/metrics":
                    problems.append(f"spec.endpoints[{i}] must scrape port http, path /metrics")
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        if set(spec) != {"groups"} or not isinstance(groups, list) or not groups:
            problems.append("spec must be exactly a non-empty `groups` list")
        else:
            for g in groups:
                for r in g.get("rules", []) if isinstance(g, dict) else []:
                    name = r.get("alert", "?")
                    unknown(r, {"alert", "expr", "for", "labels", "annotations"}, f"{name}: rule")
                    if not get(r, "labels", "severity"):
                        problems.append(f"{name}: no severity label")
                    for a in ("summary", "description"):
                        text = get(r, "annotations", a)
                        if not isinstance(text, str) or "$labels" not in text:
                            problems.append(f"{name}: annotation {a} missing or not using $labels")
                    if "for" not in r:
                        problems.append(f"{name}: no `for:`")
    else:
        problems.append("unexpected custom resource kind")
    if problems:
        for p in problems:
            c.fail(where, p)
        return
    c.ok(f"{where}: structure")
    if kind == "PrometheusRule":
        rules_file = tmp / f"{case}-rules.yaml"
        rules_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        run_promtool(c, where, ["check", "rules", rules_file.name], tmp)


def find(objects: list[tuple[str, dict[str, Any]]], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p, d) for p, d in objects if d.get("kind") == kind]


def configmap_file(configmaps: list[tuple[str, dict[str, Any]]], key: str) -> Any:
    """The YAML in `key` of the one ConfigMap (None: not exactly one, or not YAML)."""
    if len(configmaps) != 1:
        return None
    try:
        return yaml.safe_load(get(configmaps[0][1], "data", key) or "")
    except yaml.YAMLError:
        return None


def check_berth(
    c: Checker,
    case: str,
    values: dict[str, Any],
    objects: list[tuple[str, dict[str, Any]]],
    expect_alerts: bool,
    secret_values: list[str],
) -> None:
    """What berth's design and image contract need from the rendered objects."""
    deployments = find(objects, "Deployment")
    if len(deployments) != 1:
        c.fail(f"[{case}]", f"expected exactly one Deployment, got {len(deployments)}")
        return
    path, dep = deployments[0]
    w = f"[{case}] {path}"
    spec = dep.get("spec", {})
    pod = get(spec, "template", "spec") or {}
    containers = pod.get("containers") or []
    if len(containers) != 1:
        c.fail(w, f"expected one container, got {len(containers)}")
        return
    ctr = containers[0]
    args = ctr.get("args") or []
    psc = pod.get("securityContext") or {}
    csc = ctr.get("securityContext") or {}
    c.expect(spec.get("replicas") == 1, w, "replicas: 1 (one berth: Kamal's deploy lock, no leader election)")
    c.expect(get(spec, "strategy", "type") == "Recreate", w, "strategy Recreate")
    c.expect(csc.get("readOnlyRootFilesystem") is True, w, "readOnlyRootFilesystem: true")
    c.expect(csc.get("allowPrivilegeEscalation") is False, w, "allowPrivilegeEscalation: false")
    c.expect(get(csc, "capabilities", "drop") == ["ALL"], w, "capabilities drop [ALL]")
    c.expect(
        psc.get("runAsNonRoot") is True
        and psc.get("runAsUser") == 10001
        and psc.get("runAsGroup") == 10001
        and psc.get("fsGroup") == 10001,
        w,
        "pod runs as non-root 10001:10001 with fsGroup 10001",
    )
    c.expect(
        get(psc, "seccompProfile", "type") == "RuntimeDefault"
        or get(csc, "seccompProfile", "type") == "RuntimeDefault",
        w,
        "seccompProfile RuntimeDefault",
    )
    c.expect(pod.get("automountServiceAccountToken") is False, w, "no service account token mounted")
    port = [p for p in ctr.get("ports", []) if p.get("name") == "http"]
    c.expect(len(port) == 1 and port[0].get("containerPort") == 9090, w, "container port http 9090")
    probes = (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz"))
    for probe, route in probes:
        c.expect(
            get(ctr, probe, "httpGet", "path") == route
            and get(ctr, probe, "httpGet", "port") == "http",
            w,
            f"{probe} GET {route} on port http",
        )

    def arg(flag: str) -> str | None:
        """The value after `flag` in the container's args."""
        i = args.index(flag) if flag in args else len(args)
        return args[i + 1] if i + 1 < len(args) else None

    c.expect(args[:1] == ["run"], w, "args start with `run` (ENTRYPOINT tini -- berth)")
    c.expect(arg("--listen") == "0.0.0.0:9090", w, "--listen 0.0.0.0:9090")
    c.expect(arg("--checkout") == "/var/lib/berth/checkout", w, "--checkout under /var/lib/berth")
    c.expect(arg("--known-hosts") == "/etc/berth/ssh/known_hosts", w, "--known-hosts (fleet known_hosts)")
    c.expect(arg("--state-dir") == "/var/lib/berth/state", w, "--state-dir /var/lib/berth/state")
    log_format = values.get("logFormat", "json")
    c.expect(arg("--log-format") == log_format, w, f"--log-format {log_format}")
    if values.get("git", {}).get("repo"):
        c.expect(arg("--repo") == values["git"]["repo"], w, "--repo from git.repo")

    mounts = {m["mountPath"]: m for m in ctr.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for writable in ("/var/lib/berth", "/tmp"):
        m = mounts.get(writable)
        c.expect(
            m is not None and "emptyDir" in volumes.get(m["name"], {}) and not m.get("readOnly"),
            w,
            f"{writable} is a writable emptyDir",
        )
    if get(values, "persistence", "enabled"):
        m = mounts.get("/var/lib/berth/state")
        claim = volumes.get(m["name"], {}).get("persistentVolumeClaim", {}) if m else {}
        c.expect(
            bool(claim.get("claimName")) and not m.get("readOnly"),
            w,
            "/var/lib/berth/state (the history) on a writable PersistentVolumeClaim",
        )
    else:
        c.expect("/var/lib/berth/state" not in mounts, w, "no history volume without persistence")
    secret_mounts = {
        "/home/berth/.ssh": "id_ed25519",
        "/etc/berth/ssh": "known_hosts",
    }
    if get(values, "git", "auth") in ("ssh", "token"):
        secret_mounts["/etc/berth/git"] = "ssh-key" if values["git"]["auth"] == "ssh" else "token"
    if get(values, "git", "auth") == "token" and get(values, "git", "keys", "caCert"):
        c.expect(arg("--git-ca-file") == "/etc/berth/git/ca.pem", w, "--git-ca-file (git.keys.caCert)")
        git_volume = get(volumes.get(get(mounts.get("/etc/berth/git"), "name") or ""), "secret") or {}
        c.expect(
            any(i.get("path") == "ca.pem" for i in git_volume.get("items", [])),
            w,
            "the CA bundle mounted at /etc/berth/git/ca.pem",
        )
    else:
        c.expect("--git-ca-file" not in args, w, "no --git-ca-file without git.keys.caCert")
    if get(values, "apiToken", "existingSecret") or get(values, "apiToken", "create"):
        secret_mounts["/etc/berth/api"] = "token"
        c.expect(arg("--api-token-file") == "/etc/berth/api/token", w, "--api-token-file")
    if get(values, "webhookSecret", "existingSecret") or get(values, "webhookSecret", "create"):
        secret_mounts["/etc/berth/webhook"] = "secret"
        c.expect(arg("--webhook-secret-file") == "/etc/berth/webhook/secret", w, "--webhook-secret-file")
    for mount_path, file in secret_mounts.items():
        m = mounts.get(mount_path)
        sec = get(volumes.get(m["name"]) if m else None, "secret")
        c.expect(
            m is not None
            and m.get("readOnly") is True
            and isinstance(sec, dict)
            and sec.get("defaultMode") == 0o440
            and any(i.get("path") == file for i in sec.get("items", [])),
            w,
            f"Secret mounted read-only at {mount_path}/{file}, mode 0440",
        )

    configmaps = find(objects, "ConfigMap")
    if values.get("apps"):
        c.expect(arg("--apps-file") == "/etc/berth/config/berth.yml", w, "--apps-file (berth.yml)")
        c.expect("/etc/berth/config" in mounts, w, "berth.yml ConfigMap mounted at /etc/berth/config")
        ok = configmap_file(configmaps, "berth.yml") == {"apps": values["apps"]}
        c.expect(ok, f"[{case}] configmap", "one ConfigMap whose berth.yml is `apps:` from values")
        c.expect("-c" not in args and "--mode" not in args, w, "no -c/--mode with berth.yml (ignored)")
    else:
        c.expect("--apps-file" not in args, w, "no --apps-file without apps")
        c.expect(arg("--mode") == values.get("mode", "auto"), w, f"--mode {values.get('mode', 'auto')}")
    if not values.get("apps") and not values.get("notifications"):
        c.expect(not configmaps, w, "no ConfigMap without apps or notifications")
    if values.get("notifications"):
        c.expect(
            arg("--notifications-file") == "/etc/berth/config/notifications.yml",
            w,
            "--notifications-file (the ConfigMap's notifications.yml)",
        )
        ok = configmap_file(configmaps, "notifications.yml") == values["notifications"]
        c.expect(ok, f"[{case}] configmap", "notifications.yml is `notifications` from values")
        c.expect("/etc/berth/config" in mounts, w, "notifications.yml mounted at /etc/berth/config")
    else:
        c.expect("--notifications-file" not in args, w, "no --notifications-file without notifications")
    for name in values.get("notificationSecrets") or []:
        m = mounts.get(f"/etc/berth/notify/{name}")
        sec = get(volumes.get(m["name"]) if m else None, "secret")
        c.expect(
            m is not None
            and m.get("readOnly") is True
            and isinstance(sec, dict)
            and sec.get("secretName") == name
            and sec.get("defaultMode") == 0o440,
            w,
            f"Secret {name} mounted read-only at /etc/berth/notify/{name}, mode 0440",
        )
    if values.get("externalUrl"):
        c.expect(arg("--external-url") == values["externalUrl"], w, "--external-url from externalUrl")
    annotations = get(spec, "template", "metadata", "annotations") or {}
    c.expect("checksum/config" in annotations, w, "checksum/config annotation (berth.yml change rolls the pod)")

    # Secret values (each line of them) never in the pod spec; the Secrets the
    # chart makes hold every key the pod mounts from them.
    pod_text = yaml.safe_dump(dep, width=1 << 20)
    leaked = [ln for s in secret_values for ln in s.splitlines() if len(ln) >= 8 and ln in pod_text]
    c.expect(not leaked, w, "no secret value in the Deployment (only file paths)")
    made = {get(d, "metadata", "name"): d for _, d in find(objects, "Secret")}
    for vol in pod.get("volumes", []):
        name = get(vol, "secret", "secretName")
        if name in made:
            data = made[name].get("data") or {}
            keys = [i.get("key") for i in get(vol, "secret", "items") or []]
            c.expect(
                all(k in data and base64.b64decode(data[k]) for k in keys),
                f"[{case}] secrets.yaml",
                f"Secret {name} holds {keys} (volume {vol.get('name')})",
            )

    pod_labels = get(spec, "template", "metadata", "labels") or {}
    selector = get(spec, "selector", "matchLabels") or {}
    c.expect(selector.items() <= pod_labels.items(), w, "Deployment selector matches its pod labels")
    services = find(objects, "Service")
    if len(services) != 1:
        c.fail(f"[{case}]", f"expected one Service, got {len(services)}")
    else:
        sp, svc = services[0]
        ports = get(svc, "spec", "ports") or []
        c.expect(
            get(svc, "spec", "type") == "ClusterIP"
            and [(p.get("name"), p.get("targetPort")) for p in ports] == [("http", "http")],
            f"[{case}] {sp}",
            "ClusterIP Service, port named http",
        )
        c.expect(
            (get(svc, "spec", "selector") or {}).items() <= pod_labels.items(),
            f"[{case}] {sp}",
            "Service selector matches the pod",
        )
        for mp, sm in find(objects, "ServiceMonitor"):
            c.expect(
                (get(sm, "spec", "selector", "matchLabels") or {}).items()
                <= (get(svc, "metadata", "labels") or {}).items(),
                f"[{case}] {mp}",
                "ServiceMonitor selects the Service",
            )
    for sp, sa in find(objects, "ServiceAccount"):
        c.expect(sa.get("automountServiceAccountToken") is False, f"[{case}] {sp}", "no token automount")
        c.expect(pod.get("serviceAccountName") == get(sa, "metadata", "name"), w, "pod uses the ServiceAccount")

    rules = find(objects, "PrometheusRule")
    if expect_alerts:
        names = {
            r.get("alert")
            for _, d in rules
            for g in get(d, "spec", "groups") or []
            for r in g.get("rules", [])
        }
        missing = sorted(ALERTS - names)
        what = f"alerts {sorted(ALERTS)} present" + (f" (missing {missing})" if missing else "")
        c.expect(not missing, f"[{case}] prometheusrule", what)
    else:
        c.expect(not rules, f"[{case}]", "no PrometheusRule unless enabled")


def check_case(
    c: Checker,
    case: str,
    values: dict[str, Any],
    tmp: Path,
    expect_alerts: bool,
    secret_values: list[str],
) -> None:
    print(f"\n== {case}")
    lint(c, case, values)
    try:
        manifests = render(values)
    except helm_python.HelmError as e:
        c.fail(f"[{case}] render", str(e).strip())
        return
    objects = parse(c, case, manifests)
    for path, doc in objects:
        if not doc.get("apiVersion") or not doc.get("kind") or not get(doc, "metadata", "name"):
            c.fail(f"[{case}] {path}", "object without apiVersion, kind or metadata.name")
        elif doc["apiVersion"].startswith("monitoring.coreos.com/"):
            check_custom(c, case, path, doc, tmp)
        else:
            validate_core(c, case, path, doc)
    check_berth(c, case, values, objects, expect_alerts, secret_values)
    check_args_parse(c, case, objects)


def check_args_parse(c: Checker, case: str, objects: list[tuple[str, dict[str, Any]]]) -> None:
    """The real berth CLI accepts the rendered args: `berth <args> --help`
    parses every flag and value (clap stops at --help, exit 0) and fails on an
    unknown flag or a bad value (exit 2)."""
    for path, dep in find(objects, "Deployment"):
        where = f"[{case}] {path}"
        if BERTH is None:
            print(f"  note  {where}: args not run through berth's CLI (no binary; pass --berth)")
            return
        args = get(dep, "spec", "template", "spec", "containers", 0, "args") or []
        p = subprocess.run([str(BERTH), *args, "--help"], capture_output=True, text=True)
        if p.returncode == 0:
            c.ok(f"{where}: args accepted by berth's CLI ({BERTH})")
        else:
            c.fail(where, f"berth's CLI refuses the args {args}: {p.stderr.strip()}")


def check_alert_tests(c: Checker, tmp: Path) -> None:
    """promtool test rules: the rules the default values install, fed series."""
    print(f"\n== alert rule unit tests ({ALERT_TESTS})")
    where = f"[alerts] {ALERT_TESTS}"
    try:
        manifests = render({"prometheusRule": {"enabled": True}})
    except helm_python.HelmError as e:
        c.fail(where, f"render: {e}")
        return
    text = "".join(m for p, m in manifests.items() if p.endswith("/templates/prometheusrule.yaml"))
    docs = [d for d in yaml.safe_load_all(text) if d]
    if len(docs) != 1:
        c.fail(where, "the PrometheusRule did not render")
        return
    d = tmp / "alert-tests"
    d.mkdir()
    (d / "rules.yaml").write_text(yaml.safe_dump(docs[0]["spec"], sort_keys=False))
    shutil.copy(ALERT_TESTS, d / ALERT_TESTS.name)
    tested = {
        t.get("alertname")
        for test in (yaml.safe_load(ALERT_TESTS.read_text()).get("tests") or [])
        for t in test.get("alert_rule_test") or []
    }
    c.expect(ALERTS <= tested, where, f"tests cover every alert {sorted(ALERTS)}")
    run_promtool(c, where, ["test", "rules", ALERT_TESTS.name], d)


def check_values_documented(c: Checker) -> None:
    """Every key of values.yaml has a comment: on the line above or inline."""
    print("\n== values.yaml documentation")
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^\s*([A-Za-z_][\w-]*):", line)
        if not m:
            continue
        above = lines[i - 1] if i else ""
        if "#" in line.split(":", 1)[1] or re.match(r"^\s*#", above):
            continue
        undocumented.append(f"line {i + 1} `{m.group(1)}`")
    if undocumented:
        c.fail("values.yaml", "keys without a comment: " + ", ".join(undocumented))
    else:
        c.ok("values.yaml: every key has a comment")


def check_negative(c: Checker) -> None:
    print("\n== bad values must fail to render")
    for name, values, needle in NEGATIVE:
        where = f"[negative] {name}"
        try:
            render(values)
        except helm_python.HelmError as e:
            msg = str(e)
            if needle in msg:
                c.ok(f"{where}: refused ({msg.strip().splitlines()[-1].strip()})")
            else:
                c.fail(where, f"failed, but the error does not name {needle!r}: {msg.strip()}")
            continue
        c.fail(where, "rendered without error")


def main() -> int:
    global CHART, PRODUCTION_VALUES, ALERT_TESTS, BERTH
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory (default: charts/berth)")
    parser.add_argument(
        "--berth",
        type=Path,
        help="berth binary to check the rendered args with (default: target/debug/berth if built)",
    )
    opts = parser.parse_args()
    CHART = opts.chart.resolve()
    BERTH = opts.berth or (ROOT / "target" / "debug" / "berth")
    if not BERTH.exists():
        if opts.berth:
            parser.error(f"--berth {opts.berth}: no such file")
        BERTH = None
    PRODUCTION_VALUES = CHART / "examples" / "production-values.yaml"
    ALERT_TESTS = CHART / "tests" / "alerts-test.yaml"
    c = Checker()
    production = yaml.safe_load(PRODUCTION_VALUES.read_text())
    with tempfile.TemporaryDirectory(prefix="berth-chart-") as t:
        tmp = Path(t)
        # The defaults must render as-is; with monitoring on, they must too.
        check_case(c, "defaults", {}, tmp, expect_alerts=False, secret_values=[])
        check_case(
            c,
            "defaults+monitoring",
            {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
            tmp,
            expect_alerts=True,
            secret_values=[],
        )
        check_case(c, "production", copy.deepcopy(production), tmp, expect_alerts=True, secret_values=[])
        check_case(
            c,
            "quickstart",
            copy.deepcopy(QUICKSTART),
            tmp,
            expect_alerts=True,
            secret_values=list(QUICKSTART_SECRETS.values()),
        )
        check_alert_tests(c, tmp)
        check_values_documented(c)
        check_negative(c)
    print()
    if c.failures:
        print(f"check-chart: {len(c.failures)} FAILED, {c.passed} passed")
        for f in c.failures:
            print(f"  - {f}")
        return 1
    print(f"check-chart: all {c.passed} checks passed (chart {CHART}, Kubernetes {KUBE_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
