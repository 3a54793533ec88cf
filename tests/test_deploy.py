"""deploy/: the Prometheus configuration and alert rules pass promtool, the rules'
own unit tests pass, the Grafana dashboard is well formed with valid PromQL, and
every metric that the rules and the dashboard use is one a running SFU exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfu.config import Config
from sfu.server import Server

from .conftest import ROOT

pytestmark = pytest.mark.timeout(60)

PROM_DIR = os.path.join(ROOT, "deploy", "prometheus")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "sfu-dashboard.json")
PROMTOOL = shutil.which("promtool")
# series Prometheus makes itself, not the SFU
SERVER_SIDE = {"up"}
METRIC_RE = re.compile(r"\b(?:sfu|process|python)_[a-zA-Z0-9_]*\b")


def promtool(*args: str, cwd: str = PROM_DIR) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool comes with Debian's prometheus package (scripts/install-system-deps.sh)"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_prometheus_config_is_valid():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_alert_rules_are_valid_and_cover_the_issue():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    names = set(re.findall(r"^\s*- alert: (\w+)", open(os.path.join(PROM_DIR, "alerts.yml")).read(), re.M))
    assert {"SfuNodeDown", "SfuWorkerDown", "SfuNodeOverloaded", "SfuHeadroomLow", "SfuPacketLossHigh",
            "SfuEventLoopLagging", "SfuReceiveBufferOverflow"} <= names


def test_alert_rules_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # every alert has at least one test that expects it to fire
    tests = open(os.path.join(PROM_DIR, "alerts_test.yml")).read()
    rules = open(os.path.join(PROM_DIR, "alerts.yml")).read()
    for name in re.findall(r"^\s*- alert: (\w+)", rules, re.M):
        assert f"alertname: {name}" in tests, name


def dashboard_panels() -> list[dict]:
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    return dashboard["panels"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    text = open(os.path.join(PROM_DIR, "alerts.yml")).read()
    # the expr values (single line or block scalars) are all the rule file's PromQL
    exprs, block = [], None
    for line in text.splitlines():
        m = re.match(r"^(\s*)expr:\s*(\|)?\s*(.*)$", line)
        if m:
            if m.group(2):
                block = (len(m.group(1)), [])
                exprs.append(block[1])
            else:
                exprs.append([m.group(3)])
                block = None
        elif block is not None:
            if line.strip() and len(line) - len(line.lstrip()) <= block[0]:
                block = None
            else:
                block[1].append(line)
    return ["\n".join(e) for e in exprs]


def test_dashboard_is_well_formed():
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    titles = {p["title"] for p in panels if p["type"] == "row"}
    assert {"Load and capacity", "Traffic", "Population"} <= titles


def test_dashboard_promql_is_valid(tmp_path):
    """Every panel query, made a recording rule, passes `promtool check rules`."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$instance", ".*")
        lines += [f"      - record: dashboard:panel{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard_rules.yml").write_text("\n".join(lines) + "\n")
    result = promtool("check", "rules", "dashboard_rules.yml", cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


async def exposed_names(tmp_path) -> tuple[set[str], set[str]]:
    """(sample names, family names) that a running SFU serves on /metrics."""
    server = Server(Config(host="127.0.0.1", http_port=0, rtc_port=0, data_dir=str(tmp_path / "data")))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/metrics") as r:
                assert r.status == 200
                text = await r.text()
    finally:
        await server.stop()
    samples, families = set(), set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        samples.update(s.name for s in family.samples)
    return samples, families


async def test_every_metric_the_rules_and_dashboard_use_is_exposed(tmp_path):
    samples, families = await exposed_names(tmp_path)
    used_by = {}
    for source, exprs in (("alerts.yml", rule_exprs()), ("dashboard", dashboard_exprs())):
        for expr in exprs:
            for name in METRIC_RE.findall(expr):
                used_by.setdefault(name, source)
    assert len(rule_exprs()) >= 7
    missing = {name: source for name, source in used_by.items() if name not in samples}
    assert not missing, f"used but not exposed: {missing}"
    assert "up" in " ".join(rule_exprs())  # node down comes from Prometheus itself (SERVER_SIDE)
    # and the dashboard shows every SFU metric family
    shown = " ".join(dashboard_exprs())
    not_shown = sorted(f for f in families if f.startswith("sfu_") and f not in shown)
    assert not not_shown, f"exposed but on no panel: {not_shown}"
