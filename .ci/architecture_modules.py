#!/usr/bin/env python3
"""Fails when a source module of a crate is not named in ARCHITECTURE.md's table for that crate.

Each crate has a section headed "### `closer-x` (dir/src)"; a module counts as named when its
path relative to src (`turn/plan.rs`), its file name (`plan.rs`) or its folder (`turn/`) appears
in backticks in that section. Crate roots (lib.rs, main.rs) and tests files need no line.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRATES = {"proto": "closer-proto", "models": "closer-models", "knowledge-base": "closer-kb",
          "store": "closer-store", "sales": "closer-sales", "webhooks": "closer-webhooks", "connectors": "closer-connectors", "server": "closer-server",
          "cli": "closer-cli", "eval": "closer-eval"}


def sections(text):
    out = {}
    for m in re.finditer(r"^### `(closer-[a-z-]+)`[^\n]*\n(.*?)(?=^#{2,3} |\Z)", text, re.S | re.M):
        out[m.group(1)] = m.group(2)
    return out


def main():
    text = open(os.path.join(ROOT, "ARCHITECTURE.md")).read()
    secs = sections(text)
    missing = []
    for folder, crate in CRATES.items():
        src = os.path.join(ROOT, folder, "src")
        files = []
        for dirpath, _, names in os.walk(src):
            for n in names:
                if n.endswith(".rs"):
                    files.append(os.path.relpath(os.path.join(dirpath, n), src))
        if len(files) <= 1:
            continue
        sec = secs.get(crate)
        if sec is None:
            missing.append(f"{crate}: no section '### `{crate}` ({folder}/src)'")
            continue
        named = set(re.findall(r"`([^`]+)`", sec))
        for f in sorted(files):
            base = os.path.basename(f)
            if base in ("lib.rs", "main.rs") or base == "tests.rs" or f.startswith("bin/"):
                continue
            parts = f.split(os.sep)
            folders = {"/".join(parts[:i]) + "/" for i in range(1, len(parts))}
            keys = {f.replace(os.sep, "/"), base, base[:-3]} | folders
            if base == "mod.rs":
                keys |= {parts[-2] + "/", parts[-2]}
            if not keys & named:
                missing.append(f"{crate}: {f} is not named in its ARCHITECTURE.md table")
    for m in missing:
        print(m)
    print(f"modules missing from ARCHITECTURE.md: {len(missing)}")
    sys.exit(1 if missing else 0)


main()
