#!/usr/bin/env python3
"""Code and data size per crate in an unstripped binary: what makes a Lambda zip large (docs/bench.md).

Build once without stripping, in a separate target directory so the shipped build stays as it is:

    CARGO_PROFILE_RELEASE_STRIP=false CARGO_TARGET_DIR=target/sym \
        cargo build --release -p metahub-registry -p metahub-token -p metahub-admin
    bench/crate_sizes.py target/sym/release/metahub-registry

Sizes are `nm -S` symbol sizes, grouped by the first path segment of the demangled name (`<a::B as c::D>::f` counts
for `a`, `core::ptr::drop_in_place<a::B>` for `a`); what is left under `core`, `alloc` and `std` is generic code the
compiler instantiated for other crates. Unnamed C and assembly symbols (ring's) are listed by name.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess

PATH = re.compile(r"^[<&]*(?:mut |dyn )?([A-Za-z_][A-Za-z0-9_]*)::")
DROP = "core::ptr::drop_in_place<"


def crate_of(symbol: str) -> str:
    if symbol.startswith(DROP):
        symbol = symbol[len(DROP):]
    match = PATH.match(symbol)
    if match:
        return match.group(1)
    # `<&T as core::fmt::Debug>::fmt` and the like: generic code with no crate in its name.
    return "core" if "::" in symbol else f"(C/asm) {symbol[:40]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    listing = subprocess.run(["nm", "-S", "-C", args.binary], capture_output=True, text=True, check=True).stdout
    sizes: collections.Counter[str] = collections.Counter()
    for line in listing.splitlines():
        fields = line.split(None, 3)
        if len(fields) == 4 and fields[2] in "tTdDrRbBwW":
            sizes[crate_of(fields[3])] += int(fields[1], 16)
    total = sum(sizes.values())
    print(f"| crate | KiB | share |\n|---|---:|---:|")
    for crate, size in sizes.most_common(args.top):
        print(f"| {crate} | {size / 1024:.0f} | {100 * size / total:.1f} % |")
    print(f"| **all symbols** | **{total / 1024:.0f}** | |")


if __name__ == "__main__":
    main()
