#!/usr/bin/env python3
"""What a million pulls by tag cost on AWS: renders docs/cost.md from the durations bench/e2e.py measured
(target/bench/e2e.json, its "lambda" and "cold_pull" parts), the memory sizes template.yaml deploys, and list prices.

    bench/cost.py [--e2e target/bench/e2e.json] [--out docs/cost.md] [--layers 5] [--upstream-rtt-ms 40]

Every number that is not measured here is a named assumption below (and in the page), so it can be changed and the
page re-rendered. Prices are AWS list prices, us-east-1 / United States edges, as of PRICES_AS_OF.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRICES_AS_OF = "2026-12-01"
# (price in USD, unit, source, confirmed against a page in hand)
PRICES = {
    "lambda_gb_s_x86_64": (0.0000166667, "GB-second, x86_64", "aws.amazon.com/lambda/pricing (first tier)", False),
    "lambda_gb_s_arm64": (0.0000133334, "GB-second, arm64", "aws.amazon.com/lambda/pricing (first tier)", False),
    "lambda_requests": (0.20 / 1e6, "request", "aws.amazon.com/lambda/pricing: $0.20 per 1M requests", True),
    "dynamodb_read": (0.125 / 1e6, "read request unit, on-demand", "aws.amazon.com/dynamodb/pricing/on-demand", False),
    "dynamodb_write": (0.625 / 1e6, "write request unit, on-demand", "aws.amazon.com/dynamodb/pricing/on-demand", False),
    "cloudfront_https": (0.0100 / 1e4, "HTTPS request, United States", "aws.amazon.com/cloudfront/pricing", False),
    "cloudfront_function": (0.10 / 1e6, "CloudFront Functions invocation", "aws.amazon.com/cloudfront/pricing", False),
    "kms_decrypt": (0.03 / 1e4, "KMS request (SecureString decrypt at init)", "aws.amazon.com/kms/pricing", False),
}
# Docker Hub (docs.docker.com/docker-hub/usage): a pull is a GET of /v2/*/manifests/*; HEAD does not count.
DOCKER_HUB_LIMITS = {"unauthenticated, per IPv4 address": 10, "Personal (authenticated), per user": 100}

# Lambda gives a function memory/1769 of a vCPU; e2e.py measures on (a share of) this machine's cores, counted as
# one vCPU. CPU time scales with 1769/memory; waits on the network do not.
FULL_VCPU_MB = 1769


def template_memory() -> dict[str, int]:
    """MemorySize (registry, admin) and TokenMemorySize defaults from template.yaml (CloudFormation tags make it
    unreadable for yaml.safe_load, and only two numbers are needed)."""
    text = (ROOT / "template.yaml").read_text()
    out = {}
    for name in ("MemorySize", "TokenMemorySize"):
        m = re.search(rf"^  {name}:\n(?:    .*\n)*?    Default: (\d+)", text, re.M)
        if not m:
            raise SystemExit(f"template.yaml: no default for {name}")
        out[name] = int(m.group(1))
    return out


def billed_ms(local_ms: float, memory_mb: int, network_ms: float) -> float:
    """Lambda bills wall time in 1 ms steps: the CPU part scaled to the function's CPU share, plus network waits.
    The local figure already contains the (near-zero) local round trips; counting them again is the margin."""
    return max(1.0, local_ms * FULL_VCPU_MB / memory_mb + network_ms)


def model(e2e: dict, args) -> dict:
    memory = template_memory()
    lam, pull = e2e["lambda"], e2e["cold_pull"]
    steps = {s["step"]: s for s in pull["steps"]}

    def step(prefix: str) -> dict:
        return next(s for name, s in steps.items() if name.startswith(prefix))

    token_warm = lam["metahub-token"]["invocations"][1]["ms"]  # second /token of one process: argon2 + GetItem
    registry = {
        "ping": lam["metahub-registry"]["invocations"][0]["ms"] - lam["metahub-registry"]["init_ms"],
        "index": lam["metahub-registry"]["invocations"][2]["ms"],  # warm GET by tag (HEAD upstream, cached index)
        "child": step("registry GET child manifest")["ms"],
        "blob": step("registry GET blob")["ms"],
    }
    registry["ping"] = max(registry["ping"], 1.0)
    rtt, ddb = args.upstream_rtt_ms, args.dynamodb_ms
    mem_r, mem_t = memory["MemorySize"], memory["TokenMemorySize"]
    layers = args.layers
    blobs = 1 + layers  # config + layers

    # One `docker pull` by tag: GET /v2/ (401), GET /token, GET index by tag, GET child by digest, GET each blob.
    registry_invocations = 1 + 1 + 1 + blobs
    warm_registry_ms = (billed_ms(registry["ping"], mem_r, 0) + billed_ms(registry["index"], mem_r, rtt)
                        + billed_ms(registry["child"], mem_r, 0) + blobs * billed_ms(registry["blob"], mem_r, rtt))
    warm_token_ms = billed_ms(token_warm, mem_t, ddb)
    warm = {
        "registry_invocations": registry_invocations, "token_invocations": 1,
        "registry_gb_s": warm_registry_ms / 1000 * mem_r / 1024, "token_gb_s": warm_token_ms / 1000 * mem_t / 1024,
        # token: account GetItem (eventually consistent, < 4 KB: 0.5 RRU) — the machine type is cached per instance
        "rru": 0.5, "wru": 0.0,
        "cloudfront": 2 + 2 + blobs,
        # one HEAD per pull (free against Docker Hub's limit); blob locations are reused for 30 s per instance, so at
        # most one GET per blob per 30 s (counted here as one per pull: the bound); manifests come from the cache
        "upstream_head": 1, "upstream_manifest_get": 0, "upstream_blob_get": blobs,
        "kms": 0,
    }
    # Cold: both functions start (Init is billed), the instance has no cache: token fetch upstream, index and child
    # GET (they count against Docker Hub), the filtered index read from (or written to) DynamoDB.
    init_r, init_t = lam["metahub-registry"]["init_ms"], lam["metahub-token"]["init_ms"]
    init_ms_r = billed_ms(init_r, mem_r, ddb)  # + the SSM GetParameters round trip
    init_ms_t = billed_ms(init_t, mem_t, ddb)
    cold_extra_registry_ms = init_ms_r + 3 * rtt  # upstream token + index GET + child GET
    cold = dict(warm)
    cold.update({
        "registry_gb_s": (warm_registry_ms + cold_extra_registry_ms) / 1000 * mem_r / 1024,
        "token_gb_s": (warm_token_ms + init_ms_t) / 1000 * mem_t / 1024,
        "rru": warm["rru"] + 0.5 + 0.5 + 0.5,  # machine type (token), machine type + generated index (registry)
        "wru": 1.0 if args.cold_writes_index else 0.0,
        "upstream_manifest_get": 2, "upstream_token": 1,
        "kms": 2 * 2,  # two SecureStrings decrypted by each of the two cold functions
    })

    def dollars(per_pull: dict, arch: str) -> dict:
        p = {k: v[0] for k, v in PRICES.items()}
        lines = {
            "Lambda GB-seconds": (per_pull["registry_gb_s"] + per_pull["token_gb_s"]) * p[f"lambda_gb_s_{arch}"],
            "Lambda requests": (per_pull["registry_invocations"] + per_pull["token_invocations"]) * p["lambda_requests"],
            "DynamoDB reads": per_pull["rru"] * p["dynamodb_read"],
            "DynamoDB writes": per_pull["wru"] * p["dynamodb_write"],
            "CloudFront requests": per_pull["cloudfront"] * p["cloudfront_https"],
            "CloudFront Functions (viewer request)": per_pull["cloudfront"] * p["cloudfront_function"],
            "KMS (SecureString decrypts at init)": per_pull["kms"] * p["kms_decrypt"],
        }
        return {k: v * 1e6 for k, v in lines.items()}

    return {"memory": memory, "local_ms": {"token": token_warm, **registry, "init_registry": init_r, "init_token": init_t},
            "warm": warm, "cold": cold, "layers": layers, "rtt": rtt, "ddb": ddb,
            "usd": {(kind, arch): dollars(per, arch) for kind, per in (("warm", warm), ("cold", cold))
                    for arch in ("x86_64", "arm64")},
            "when": e2e.get("when"), "load": e2e.get("load_before")}


def render(m: dict, args) -> str:
    L = ["# What a million pulls cost", "",
         f"Rendered by `bench/cost.py` from `bench/e2e.py`'s measurements ({m['when']}, load {m['load']}) and "
         f"template.yaml's memory sizes (registry/admin {m['memory']['MemorySize']} MB, token "
         f"{m['memory']['TokenMemorySize']} MB). Prices: AWS list prices, us-east-1 and United States edges, as of "
         f"{PRICES_AS_OF}. Rerun `bench/cost.py` after `bench/run.sh` to refresh.", "",
         "## What one `docker pull` by tag costs", "",
         f"A pull of a {m['layers']}-layer image: `GET /v2/` (401), `GET /token`, `GET` the index by tag, `GET` the child "
         f"manifest by digest, then one `GET` per blob (config + {m['layers']} layers), each answered 307 — blob bytes "
         "come from the upstream's storage, never through MetaHub or CloudFront.", "",
         "| per pull | warm | cold (both functions start) |", "|---|---:|---:|"]
    w, c = m["warm"], m["cold"]
    for key, label in (("registry_invocations", "registry function invocations"), ("token_invocations", "token function invocations"),
                       ("registry_gb_s", "registry GB-seconds"), ("token_gb_s", "token GB-seconds"),
                       ("rru", "DynamoDB read request units"), ("wru", "DynamoDB write request units"),
                       ("cloudfront", "CloudFront requests (and viewer-request function runs)"),
                       ("upstream_head", "upstream manifest HEADs (free against Docker Hub's limit)"),
                       ("upstream_manifest_get", "upstream manifest GETs (count against Docker Hub's limit)"),
                       ("upstream_blob_get", "upstream blob GETs (the 307's Location; not counted by Docker Hub)"),
                       ("kms", "KMS decrypts")):
        fmt = (lambda v: f"{v:.6f}") if "gb_s" in key else (lambda v: f"{v:g}")
        L.append(f"| {label} | {fmt(w[key])} | {fmt(c[key])} |")
    L += ["", "## A million pulls by tag, in USD", "",
          "| line | warm, x86_64 | warm, arm64 | cold, x86_64 | cold, arm64 |", "|---|---:|---:|---:|---:|"]
    keys = list(m["usd"][("warm", "x86_64")])
    for k in keys:
        L.append("| " + k + " | " + " | ".join(f"{m['usd'][(kind, arch)][k]:.2f}" for kind in ("warm", "cold")
                                                 for arch in ("x86_64", "arm64")) + " |")
    L.append("| **total** | " + " | ".join(f"**{sum(m['usd'][(kind, arch)].values()):.2f}**" for kind in ("warm", "cold")
                                           for arch in ("x86_64", "arm64")) + " |")
    lm = m["local_ms"]
    L += ["", "Warm = every invocation lands on an instance that has served this image before; cold = every pull starts "
          "both functions (the ceiling: a real month sits between the two, near warm for any steady traffic).", "",
          "## Formula", "",
          "```",
          "billed ms (one invocation) = max(1, local_ms × 1769 / memory_MB + network_ms)",
          "GB-s                       = billed ms / 1000 × memory_MB / 1024",
          "USD per million pulls      = 10^6 × ( GB-s × price_GB-s + invocations × price_request",
          "                                    + RRU × price_RRU + WRU × price_WRU",
          "                                    + CloudFront requests × (price_HTTPS_request + price_CF_function)",
          "                                    + KMS decrypts × price_KMS )",
          "```", "",
          "- `local_ms`: measured by `bench/e2e.py` through the Runtime API stand-in (moto, local `docker-registry`), "
          f"counted as one vCPU: token `GET /token` {lm['token']:.1f} ms (argon2id verify: CPU), registry `GET /v2/` "
          f"{lm['ping']:.1f} ms, index by tag {lm['index']:.1f} ms, child manifest {lm['child']:.1f} ms, blob 307 "
          f"{lm['blob']:.1f} ms; init registry {lm['init_registry']:.1f} ms, token {lm['init_token']:.1f} ms (Lambda "
          "bills the Init phase of a custom runtime).",
          "- `1769 / memory_MB`: Lambda's CPU share (one vCPU at 1769 MB); it overstates I/O-bound steps, so the figures "
          "lean high.",
          f"- `network_ms` (assumed, not measured here): {m['rtt']:.0f} ms per upstream round trip (the tag HEAD, a blob "
          f"location GET; Docker Hub from us-east-1), {m['ddb']:.0f} ms per DynamoDB or SSM call. Change with "
          "`--upstream-rtt-ms` / `--dynamodb-ms`.",
          "- DynamoDB: eventually consistent `GetItem` of an item < 4 KB = 0.5 RRU; the account read at each login, the "
          "machine type and generated index only on a cold instance (then cached in memory)"
          + ("; a cold pull writes the generated index once (1 WRU, the ceiling: in practice once per index and machine "
             "type)." if args.cold_writes_index else "."),
          "- Not counted: CloudWatch Logs ingestion (INFO logs are one line per request at most), data transfer "
          "(answers are a few KB; blobs never pass through), the free tiers.", "",
          "## Prices used", "",
          "| price | unit | source | confirmed |", "|---:|---|---|---|"]
    for key, (price, unit, source, confirmed) in PRICES.items():
        L.append(f"| {price:.10g} | {unit} | {source} | {'yes' if confirmed else 'not confirmed from a first-party page'} |")
    L += ["", "Confirmed = read on the provider's page while writing this; the others are the long-standing list prices "
          "as published by AWS (DynamoDB on-demand after its November 2024 price cut), which could not be confirmed "
          "from a first-party page at hand: check them on the pricing pages before relying on a total.", "",
          "## Docker Hub's rate limits", "",
          "Docker Hub counts a GET of `/v2/*/manifests/*` as a pull; HEAD is free. Limits per hour: "
          + ", ".join(f"{k}: {v}" for k, v in DOCKER_HUB_LIMITS.items()) + " (paid plans: none).", "",
          f"- Warm: a pull by tag costs {w['upstream_head']} HEAD and {w['upstream_manifest_get']} manifest GET upstream — "
          "a million warm pulls use **none** of the limit.",
          f"- Cold: {c['upstream_manifest_get']} manifest GETs (the index and the child) per cold instance and image. "
          "With `UpstreamCredentialsParameterName` set (a Personal account), 100 per hour allow ~50 cold "
          "instance×image pairs an hour; anonymous, Lambda's shared egress addresses make 10 per hour per IP a real risk: "
          "deploy with upstream credentials.",
          "- Concurrent tag checks of one tag in one instance share one HEAD; blob locations are reused for 30 s.", "",
          "## What `--tag-ttl` (`METAHUB_TAG_TTL`) saves, and what it costs", "",
          "With a TTL of T seconds an instance reuses a tag's upstream check for T seconds instead of a HEAD per request. "
          "For one tag pulled at r pulls/s on one instance, HEADs per pull ≈ 1 / (1 + r·T):", "",
          "| pulls/s on one instance | T = 0 | T = 10 s | T = 60 s |", "|---:|---:|---:|---:|"]
    for rate in (0.01, 0.1, 1, 10):
        L.append(f"| {rate:g} | 1 | {1 / (1 + rate * 10):.3f} | {1 / (1 + rate * 60):.3f} |")
    saved_ms = m["rtt"] * 1769 / 1769  # the HEAD's wait, not CPU
    usd = saved_ms / 1000 * m["memory"]["MemorySize"] / 1024 * PRICES["lambda_gb_s_x86_64"][0] * 1e6
    L += ["", f"- Money: a skipped HEAD saves its round trip (~{m['rtt']:.0f} ms of billed duration): about "
          f"**${usd:.2f} per million pulls** at {m['memory']['MemorySize']} MB, x86_64. HEADs are free against "
          "Docker Hub's limit, so the TTL does not protect the rate limit; it lowers latency (one round trip less per "
          "pull) and upstream load (bench: 5–6× more requests/s served).",
          "- Freshness: a tag moved upstream (a new push of `:latest`) is served at its old digest for up to T seconds "
          "by each instance that checked it last; a client pulling by digest is never affected. The default is 1 s "
          "(issue 32): a fleet rollout then costs the upstream one HEAD per tag per second and instance, not one per "
          "node, while `docker pull` right after `docker push` waits at most a second; `0` checks on every pull.", ""]
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--e2e", default=str(ROOT / "target" / "bench" / "e2e.json"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "cost.md"))
    ap.add_argument("--layers", type=int, default=5, help="layers of the pulled image (blob GETs = layers + 1)")
    ap.add_argument("--upstream-rtt-ms", type=float, default=40.0)
    ap.add_argument("--dynamodb-ms", type=float, default=5.0)
    ap.add_argument("--no-cold-writes-index", dest="cold_writes_index", action="store_false")
    args = ap.parse_args()
    e2e = json.loads(Path(args.e2e).read_text())
    if "cold_pull" not in e2e or not e2e.get("lambda"):
        raise SystemExit(f"{args.e2e} has no Lambda measurements: run bench/e2e.py --only lambda first")
    Path(args.out).write_text(render(model(e2e, args), args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
