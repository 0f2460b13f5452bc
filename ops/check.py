#!/usr/bin/env python3
"""Checks the dashboard and the alerting rules of ops/ against the code.

- ops/prometheus/alerts.yml: YAML of Prometheus rule groups; every rule an alert with an
  expression, a severity label and a summary and description.
- ops/grafana/catalog.json: a Grafana dashboard whose panels have unique ids, a title, a
  description, a grid position and at least one query; no two panels overlap.
- Every metric named in a query or rule is one the code registers (the `counter!`, `gauge!`
  and `histogram!` calls under crates/*/src, with a histogram's _bucket, _sum and _count),
  or catalog_consistency_checks_total (the live consistency checker's).

Exit status 1 with one line per problem. Needs PyYAML (python3-yaml or pip install pyyaml).
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Metrics named in ops/ that are registered outside crates/*/src.
EXTERNAL = {"catalog_consistency_checks_total"}
# Words of PromQL that look like metric names.
PROMQL = {
    "sum", "rate", "irate", "increase", "delta", "deriv", "max", "min", "avg", "count", "by",
    "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "histogram_quantile", "absent", "changes", "resets", "time", "vector", "scalar",
    "clamp_min", "clamp_max", "le", "topk", "bottomk", "label_values", "inf", "nan",
}
problems = []


def problem(msg):
    problems.append(msg)


def exported():
    names = set()
    pattern = re.compile(r'(counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"')
    for path in ROOT.glob("crates/*/src/**/*.rs"):
        for kind, name in pattern.findall(path.read_text()):
            names.add(name)
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def metrics_in(expr):
    """Metric names of a PromQL expression: identifiers that are not label names, label
    values, functions, keywords, durations or template variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, strings
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+|\[[^\]]*\]", "", expr)  # $variables, [ranges]
    expr = re.sub(r"\b\d[\w.]*", "", expr)  # numbers, durations (offset 1d)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = m.group(0)
        after = expr[m.end():].lstrip()
        if word in PROMQL or after.startswith("("):
            continue
        names.add(word)
    return names


def check_rules(path, known):
    doc = yaml.safe_load(path.read_text())
    groups = doc.get("groups") if isinstance(doc, dict) else None
    if not isinstance(groups, list) or not groups:
        return problem(f"{path}: no rule groups")
    alerts = set()
    for g in groups:
        if not isinstance(g.get("name"), str) or not isinstance(g.get("rules"), list):
            problem(f"{path}: a group without a name or rules: {g!r}"[:200])
            continue
        for r in g["rules"]:
            name = r.get("alert")
            where = f"{path}: {g['name']}/{name}"
            if not isinstance(name, str) or name in alerts:
                problem(f"{where}: every rule is an alert with a name of its own")
            alerts.add(name)
            if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                problem(f"{where}: no expr")
                continue
            if "for" in r and not re.fullmatch(r"\d+[smh]", str(r["for"])):
                problem(f"{where}: for is not a duration: {r['for']!r}")
            if r.get("labels", {}).get("severity") not in ("page", "ticket"):
                problem(f"{where}: severity is page or ticket")
            for a in ("summary", "description"):
                if not str(r.get("annotations", {}).get(a, "")).strip():
                    problem(f"{where}: no {a}")
            for m in metrics_in(r["expr"]) - known:
                problem(f"{where}: {m} is not a metric the code exports")
    return alerts


def check_dashboard(path, known):
    d = json.loads(path.read_text())
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in d:
            problem(f"{path}: no {key}")
    ids, boxes = set(), []
    for p in d.get("panels", []):
        where = f"{path}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problem(f"{where}: id used twice")
        ids.add(p.get("id"))
        if not p.get("title") or not p.get("description") or not p.get("type"):
            problem(f"{where}: a panel has a type, a title and a description")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
            problem(f"{where}: gridPos")
            continue
        for o in boxes:
            if g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and g["y"] < o["y"] + o["h"] and o["y"] < g["y"] + g["h"]:
                problem(f"{where}: overlaps another panel")
        boxes.append(g)
        targets = p.get("targets") or []
        if not targets:
            problem(f"{where}: no query")
        for t in targets:
            if not t.get("expr") or not t.get("refId"):
                problem(f"{where}: a query without expr or refId")
                continue
            for m in metrics_in(t["expr"]) - known:
                problem(f"{where}: {m} is not a metric the code exports")
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query":
            for m in re.findall(r"label_values\((\w+)", q or ""):
                if m not in known:
                    problem(f"{path}: variable {v.get('name')}: {m} is not a metric the code exports")
    return [p.get("title") for p in d.get("panels", [])]


def main():
    known = exported() | EXTERNAL
    if len(known) < 10:
        problem(f"only {len(known)} metrics found under crates/*/src: is this the repository?")
    alerts = check_rules(ROOT / "ops/prometheus/alerts.yml", known)
    panels = check_dashboard(ROOT / "ops/grafana/catalog.json", known)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"ops: {len(panels)} panels, {len(alerts)} alerts, every metric exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
