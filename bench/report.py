#!/usr/bin/env python3
"""Renders docs/bench.md from criterion's estimates (target/criterion) and bench/e2e.py's JSON.

Usage: bench/report.py [--e2e target/bench/e2e.json] [--criterion target/criterion] [--out docs/bench.md]
       bench/report.py --lambda-only   # after `bench/e2e.py --only lambda`: rewrite only the Lambda rows of the
                                       # targets, the notes and the "Lambda functions" section of the existing page
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TARGETS = {
    "filter64_us": 20.0,
    "init_ms": 25.0,
    "first_answer_ms": 100.0,
    "zip_bytes": 4_000_000,
    "rss_kib": 128 * 1024,
    "tag_ratio": 1.0,
}


def criterion(dir_: Path) -> dict[str, dict[int, dict]]:
    """{variant: {entries: {mean_us, lo_us, hi_us}}} from target/criterion/filter_index/VARIANT/N/new/estimates.json."""
    out: dict[str, dict[int, dict]] = {}
    group = dir_ / "filter_index"
    if not group.is_dir():
        return out
    for est in sorted(group.glob("*/*/new/estimates.json")):
        variant, n = est.parts[-4], est.parts[-3]
        if not n.isdigit():
            continue
        mean = json.loads(est.read_text())["mean"]
        out.setdefault(variant, {})[int(n)] = {
            "mean_us": mean["point_estimate"] / 1000,
            "lo_us": mean["confidence_interval"]["lower_bound"] / 1000,
            "hi_us": mean["confidence_interval"]["upper_bound"] / 1000,
        }
    return out


def ok(flag: bool | None) -> str:
    return "—" if flag is None else ("met" if flag else "**missed**")


def ms(x: float | None) -> str:
    return "—" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def mib(b: int | None) -> str:
    return "—" if b is None else f"{b / 1024 / 1024:.1f} MiB"


def render(e2e: dict, crit: dict, notes: list[str]) -> str:
    L: list[str] = []
    w = e2e.get("wrk", {})
    L += [
        "# MetaHub benchmark",
        "",
        f"Run {e2e.get('when', '?')} on {e2e.get('machine', '?')}; load average before {e2e.get('load_before', '?')}, "
        f"after {e2e.get('load_after', '?')}. Everything on 127.0.0.1. Produced by `bench/run.sh` "
        f"(criterion for filtering, `bench/e2e.py` for the rest, `bench/report.py` for this page); rerun it to refresh.",
        "",
        "The machine has 2 cores shared by wrk, metahub, docker-registry (and moto): absolute figures are modest and noisy;",
        "the **ratios** compare metahub with the upstream measured right before it under the same conditions. As root,",
        "`bench/run.sh` runs everything measured at `nice -n -19`, so concurrent compiles on the machine weigh less.",
        "",
    ]

    # ---- targets
    targets: list[tuple[str, str, str]] = []
    f64 = crit.get("best", {}).get(64)
    targets.append(("filtering a 64-entry index < 20 µs", f"{f64['mean_us']:.1f} µs" if f64 else "not run",
                    ok(f64["mean_us"] < TARGETS["filter64_us"]) if f64 else ok(None)))
    for label, rows in e2e.get("throughput", {}).items():
        tag = next((r for r in rows if r["kind"] == "GET manifest by tag"), None)
        if tag and tag["ratio"] is not None:
            targets.append((f"warm pull-by-tag throughput ≥ 1.0× upstream manifest GET ({label}; tag checked upstream on every request)",
                            f"{tag['ratio']:.2f}×", ok(tag["ratio"] >= TARGETS["tag_ratio"])))
    for label, c in e2e.get("counts", {}).items():
        warm = c["pulls"].get("skopeo, warm by tag")
        if warm:
            targets.append((f"warm pull by tag: ≤ 1 upstream HEAD, 0 GET of a manifest ({label})",
                            f"{warm['manifest HEAD']} HEAD, {warm['manifest GET']} manifest GET (+{warm['blob GET/HEAD']} blob GETs)",
                            ok(warm["manifest HEAD"] <= 1 and warm["manifest GET"] == 0)))
        dig = c["pulls"].get("skopeo, warm by digest")
        if dig:
            targets.append((f"pull by digest, once cached: no upstream request ({label})",
                            f"{dig['manifest HEAD'] + dig['manifest GET']} manifest requests, {dig['blob GET/HEAD']} blob GETs",
                            ok(dig["total"] == 0)))
    targets += lambda_targets(e2e)
    L += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    L += [f"| {a} | {b} | {c} |" for a, b, c in targets]
    L += [""]
    if notes:
        L += ["Notes on the targets: why one is missed, how the others were met:", ""] + [f"- {n}" for n in notes] + [""]

    # ---- filtering
    L += ["## Filtering (criterion)", "",
          "`cargo bench -p metahub-core --bench filter`: `filter_index` (parse, match, splice the kept entries, sha256) of an OCI index with",
          "cpu levels from the x86 and arm DAGs, nvcaps and attestations, for a cascadelake + nvcap:8.6 machine type.",
          "Mean time per call, 95% interval in brackets.", "",
          "| entries | best | exact | of which: parse | of which: match (`explain`) |", "|---:|---:|---:|---:|---:|"]
    for n in (8, 64, 512):
        cells = []
        for v in ("best", "exact", "parse_only", "explain_only"):
            e = crit.get(v, {}).get(n)
            cells.append(f"{e['mean_us']:.1f} µs [{e['lo_us']:.1f}–{e['hi_us']:.1f}]" if e else "—")
        L.append(f"| {n} | " + " | ".join(cells) + " |")
    L += [""]

    # ---- throughput
    def table(rows: list[dict]) -> list[str]:
        out = ["| request | upstream req/s | metahub req/s | ratio | upstream p50 / p99 ms | metahub p50 / p99 ms | errors (non-2xx/3xx) |",
               "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            u, m = r["upstream"], r["metahub"]
            err = f"{u['bad']} / {m['bad']}"
            if u.get("socket_errors") or m.get("socket_errors"):
                err += f" (socket: {u.get('socket_errors') or '0'} / {m.get('socket_errors') or '0'})"
            out.append(f"| {r['kind']} | {u['rps']:.0f} | {m['rps']:.0f} | **{r['ratio']:.2f}×** | {ms(u['p50_ms'])} / {ms(u['p99_ms'])} | "
                       f"{ms(m['p50_ms'])} / {ms(m['p99_ms'])} | {err} |")
        return out

    if e2e.get("throughput"):
        L += ["## Throughput and latency, metahub vs its upstream", "",
              f"`wrk -t{w.get('threads')} -c{w.get('connections')} -d{w.get('seconds')}s --latency`, each metahub run right after the same kind of",
              "request sent straight to `docker-registry` (distribution 2.8, filesystem storage, blobs 307 to a file server as Docker",
              "Hub's do). Warm: metahub has seen the tag once; by tag it still HEADs the upstream for every request (concurrent",
              "checks of one tag share one HEAD). By digest metahub answers a filtered index it generated; the upstream row GETs",
              "the upstream index by digest. Blob: both answer 307; metahub asks the upstream for the Location each time",
              "(concurrent lookups of one blob share one upstream GET). HEAD rows are measured with `ab -k -i` on both sides",
              f"(-c{w.get('connections')}, {w.get('seconds')} s): wrk 4.1 waits for a body after a HEAD answer and stalls.", ""]
        for label, rows in e2e["throughput"].items():
            L += [f"### Store: {label}", ""] + table(rows) + [""]
        if e2e.get("throughput_ttl"):
            L += ["### With `--tag-ttl 10s` (embedded store; not the headline: a tag may be 10 s stale)", ""] + table(e2e["throughput_ttl"]) + [""]
        every = [r[side]["cmd"] for rows in e2e["throughput"].values() for r in rows for side in ("metahub", "upstream")]
        cmds = every[:2] + [c for c in every if c.startswith("ab ")][:1]
        L += ["Commands (token elided):", "", "```"] + [re.sub(r"Bearer [^'\s]+", "Bearer <token>", c) for c in cmds] + ["```", ""]

    # ---- counts
    if e2e.get("counts"):
        L += ["## Upstream requests per client pull", "",
              "Counted in the access log of a second `docker-registry` on the same storage (so logging does not slow the",
              "throughput runs). A fresh metahub per store; `skopeo copy docker://… dir:…` pulls `org/app:latest` (8-entry index:",
              "the index, one child manifest, a config and a layer blob); the containerd-style client HEADs the tag, GETs the",
              "index by the digest it was told, then the child and blobs. Blob GETs are metahub asking the upstream where the",
              "blob is (the 307 it forwards); the blob bytes come from storage, never through metahub.", ""]
        labels = list(next(iter(e2e["counts"].values()))["pulls"].keys())
        stores = list(e2e["counts"].keys())
        L += ["| pull | " + " | ".join(f"{s}: manifest HEAD / manifest GET / blob GET" for s in stores) + " |",
              "|---|" + "---:|" * len(stores)]
        for lab in labels:
            cells = []
            for s in stores:
                c = e2e["counts"][s]["pulls"][lab]
                cells.append(f"{c['manifest HEAD']} / {c['manifest GET']} / {c['blob GET/HEAD']}")
            L.append(f"| {lab} | " + " | ".join(cells) + " |")
        L += ["", "Under load (wrk, 3 s, one tag, warm): upstream HEADs per metahub tag GET — what shared in-flight checks save:", ""]
        for s in stores:
            u = e2e["counts"][s]["under_load"]
            L.append(f"- {s}: {u['upstream']['manifest HEAD']} HEADs for {u['requests']} requests = {u['heads_per_request']:.3f} per request")
        L += [""]

    L += lambda_section(e2e)
    if e2e.get("rss"):
        L += ["Peak RSS of `metahub serve`: " + "; ".join(f"{k}: {v / 1024:.1f} MiB" for k, v in e2e["rss"].items() if v), ""]

    L += ["## How to run", "", "```", "bench/run.sh                 # release build if needed, criterion, e2e, writes docs/bench.md",
          "BENCH_SECONDS=5 bench/run.sh # shorter wrk runs (max 10)", "bench/e2e.py --help",
          "bench/e2e.py --only lambda && bench/report.py --lambda-only   # only the Lambda figures",
          "bench/cost.py                # docs/cost.md from the same measurements",
          "bench/crate_sizes.py BIN     # code size per crate of an unstripped build (how to make one: --help)",
          "bench/rollout.py --help      # a fleet rollout: N nodes, P at a time, against serve, the upstream and the Lambda stand-in",
          "bench/saturated_clients.py   # what containerd and podman do with a 503 + Retry-After", "```", "",
          f"This run's end-to-end part took {e2e.get('elapsed_s', 0):.0f} s.", ""]
    return "\n".join(L)


FUNCTIONS = ("metahub-registry", "metahub-token", "metahub-admin")


def lambda_targets(e2e: dict) -> list[tuple[str, str, str]]:
    """One row per function and target: init, first answer, zip; and peak RSS over all three."""
    rows = []
    lam = e2e.get("lambda", {})
    sizes = {s["name"]: s for s in e2e.get("sizes", []) if not s.get("missing")}
    for name in FUNCTIONS:
        r = lam.get(name)
        runs = f" (median of {r['runs']})" if r and r.get("runs") else ""
        rows.append((f"{name} init < {TARGETS['init_ms']:.0f} ms", f"{r['init_ms']:.1f} ms{runs}" if r else "not measured",
                     ok(r["init_ms"] < TARGETS["init_ms"]) if r else ok(None)))
        rows.append((f"{name} first answer < {TARGETS['first_answer_ms']:.0f} ms",
                     f"{r['first_answer_ms']:.1f} ms{runs}" if r else "not measured",
                     ok(r["first_answer_ms"] < TARGETS["first_answer_ms"]) if r else ok(None)))
        z = sizes.get(name)
        rows.append((f"{name} zip < 4 MB", f"{z['zip_bytes'] / 1e6:.2f} MB ({mib(z['zip_bytes'])})" if z else "not built",
                     ok(z["zip_bytes"] < TARGETS["zip_bytes"]) if z else ok(None)))
    rss = [v["peak_rss_kib"] for v in lam.values() if v.get("peak_rss_kib")]
    rows.append(("fits a 128 MB function (peak RSS)", f"max {max(rss) / 1024:.1f} MiB" if rss else "not measured",
                 ok(max(rss) < TARGETS["rss_kib"]) if rss else ok(None)))
    return rows


def lambda_section(e2e: dict) -> list[str]:
    L = ["## Lambda functions", ""]
    if e2e.get("lambda_load"):
        L += [f"Measured {e2e.get('lambda_when', e2e.get('when', '?'))}; load average before {e2e['lambda_load'][0]}, "
              f"after {e2e['lambda_load'][1]}.", ""]
    if e2e.get("sizes"):
        L += ["| binary | size | `zip -9` of it as `bootstrap` |", "|---|---:|---:|"]
        for s in e2e["sizes"]:
            if s.get("missing"):
                L.append(f"| {s['name']} | not built | — |")
            else:
                L.append(f"| `{s['path']}` | {mib(s['bytes'])} | {s['zip_bytes'] / 1e6:.2f} MB ({mib(s['zip_bytes'])}) |")
        L += [""]
    if e2e.get("lambda"):
        L += ["Cold start against the Lambda Runtime API stand-in of `tests/lambda/runtime_api.py` (first event queued before the",
              "process starts, as on a cold invoke), DynamoDB and SSM on moto, configured as template.yaml deploys them:",
              "**init** = process start to its first `GET /runtime/invocation/next` (what Lambda bills as Init Duration);",
              "**first answer** = process start to the first invocation's response. Each is the median of fresh processes",
              "(range in brackets); the invocations are the first process's. Peak RSS = `VmHWM` after the invocations.",
              "**floor** = `/bin/true` started the same way just before each start: what starting any process cost the",
              "machine at that moment (this VM is several times slower right after an idle second than back to back).", "",
              "| function | init ms | floor ms | first answer ms | invocations (status, ms each) | peak RSS |",
              "|---|---:|---:|---:|---|---:|"]
        for name, r in e2e["lambda"].items():
            inv = "; ".join(f"{i['request']} → {i['status']}, {i['ms']:.1f}" for i in r["invocations"])
            rng = lambda key: f" [{r[key][0]:.1f}–{r[key][1]:.1f}]" if r.get(key) else ""  # noqa: E731
            floor = f"{r['floor_ms']:.1f}{rng('floor_range_ms')}" if "floor_ms" in r else "—"
            L.append(f"| {name} | {r['init_ms']:.1f}{rng('init_range_ms')} | {floor} | {r['first_answer_ms']:.1f}"
                     f"{rng('first_answer_range_ms')} | {inv} | {(r['peak_rss_kib'] or 0) / 1024:.1f} MiB |")
        L += [""]
    if e2e.get("cold_pull"):
        pull = e2e["cold_pull"]
        L += ["### A cold pull, end to end", "",
              "One pull by tag as `docker pull` makes it, both functions cold (fresh processes, first event queued), through",
              "the Runtime API stand-in; each step from the moment the client sends it to the function's answer (no",
              "CloudFront, no network: add those round trips in AWS).", "",
              "| step | status | ms | of which init |", "|---|---:|---:|---:|"]
        for st in pull["steps"]:
            init = f"{st['init_ms']:.1f}" if "init_ms" in st else ""
            L.append(f"| {st['step']} | {st['status']} | {st['ms']:.1f} | {init} |")
        L += [f"| **total, as the user feels it** | | **{pull['total_ms']:.1f}** | |", ""]
    if e2e.get("lambda_missing"):
        L += [f"Missing: {e2e['lambda_missing']}.", ""]
    return L


def replace_lambda_parts(page: str, e2e: dict, notes: list[str]) -> str:
    """The existing page with its Lambda target rows, its notes and its "Lambda functions" section rendered anew."""
    lines = page.split("\n")
    lambda_row = re.compile(r"^\| (registry function init|function zip|fits a 128 MB|metahub-(registry|token|admin) )")
    out, i, inserted = [], 0, False
    while i < len(lines):
        line = lines[i]
        if lambda_row.match(line):
            if not inserted:
                out += [f"| {a} | {b} | {c} |" for a, b, c in lambda_targets(e2e)]
                inserted = True
            i += 1
            continue
        if line.startswith(("Why a target is missed", "Notes on the targets")):
            out += [line, ""] + [f"- {n}" for n in notes]
            i += 1
            while i < len(lines) and (lines[i].startswith("- ") or not lines[i].strip()):
                i += 1
            out.append("")
            continue
        if line == "## Lambda functions":
            out += lambda_section(e2e)
            i += 1
            while i < len(lines) and not lines[i].startswith("## ") and not lines[i].startswith("Peak RSS of `metahub serve`"):
                i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--e2e", default=str(ROOT / "target" / "bench" / "e2e.json"))
    ap.add_argument("--criterion", default=str(ROOT / "target" / "criterion"))
    ap.add_argument("--notes", default=str(ROOT / "bench" / "notes.md"), help="one bullet per line: why targets are missed")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench.md"))
    ap.add_argument("--serverless", default=str(ROOT / "target" / "bench" / "serverless.json"), help="bench/serverless_pull.py's JSON")
    ap.add_argument("--lambda-only", action="store_true", help="update only the Lambda parts of --out")
    a = ap.parse_args()
    e2e = json.loads(Path(a.e2e).read_text()) if Path(a.e2e).is_file() else {}
    notes_path = Path(a.notes)
    notes: list[str] = []
    for ln in notes_path.read_text().splitlines() if notes_path.is_file() else []:
        if ln.startswith("- "):
            notes.append(ln[2:].strip())
        elif ln.startswith("  ") and notes:  # a bullet's continuation line
            notes[-1] += " " + ln.strip()
    if a.lambda_only:
        text = replace_lambda_parts(Path(a.out).read_text(), e2e, notes)
    else:
        text = render(e2e, criterion(Path(a.criterion)), notes)
        if Path(a.serverless).is_file():
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from serverless_pull import render as render_serverless

            section = render_serverless(json.loads(Path(a.serverless).read_text()))
            text = text.replace("## How to run", section + "\n## How to run", 1)
    # Sections written by hand from other runs (bench/rollout.py) are kept as they are.
    old = Path(a.out).read_text() if Path(a.out).is_file() else ""
    kept = re.search(r"<!-- rollout.*?<!-- /rollout -->\n", old, re.S)
    if kept and kept.group(0) not in text:
        text = text.replace("## How to run", kept.group(0) + "\n## How to run", 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
