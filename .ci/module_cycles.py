#!/usr/bin/env python3
"""Fails when two or more modules of one crate import each other in a loop.

An edge A -> B means a path in A's file names an item of module B: `crate::b::…`, `super::…`,
`self::b::…`, or a bare `b::…` where b is A's own submodule. Paths resolve to the deepest module
that exists, so `super::x::Item` from a sibling is an edge to `x`, not to the parent. Prints every
strongly connected component of more than one module.
"""
import os
import re
import sys

CRATES = ["proto", "models", "knowledge-base", "store", "sales", "webhooks", "connectors", "server", "cli", "eval"]
# Crates whose loops are reported but do not fail (none left: every crate fails on a loop).
KNOWN = set()
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(dirpath, f)
    return mods


def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def resolve(mods, base, parts):
    best = None
    for i in range(len(parts) + 1):
        cand = tuple(base) + tuple(parts[:i])
        if cand in mods:
            best = cand
    return best


def edges(mods):
    out = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip(open(path, encoding="utf-8").read())
        for root, rest in PATH.findall(text):
            parts = rest.strip(":").split("::")
            if root == "crate":
                base = ()
            elif root == "super":
                base = m[:-1]
                while parts and parts[0] == "super":
                    base, parts = base[:-1], parts[1:]
            else:
                base = m
            t = resolve(mods, base, parts)
            if t is not None and t != m:
                out[m].add(t)
        children = {k[-1] for k in mods if len(k) == len(m) + 1 and k[: len(m)] == m}
        for c in children:
            if re.search(r"(?<![:\w])" + re.escape(c) + r"::", text):
                out[m].add(m + (c,))
    return out


def sccs(graph):
    index, low, stack, on, res, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            res.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return res


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    bad = 0
    for crate in CRATES:
        src = os.path.join(root, crate, "src")
        if not os.path.isdir(src):
            continue
        graph = edges(modules(src))
        for comp in sccs(graph):
            if len(comp) > 1:
                names = sorted("::".join(("crate",) + c) for c in comp)
                known = " (known, not yet broken)" if crate in KNOWN else ""
                print(f"{crate}: import loop among {', '.join(names)}{known}")
                bad += 0 if known else 1
    print(f"module loops: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
