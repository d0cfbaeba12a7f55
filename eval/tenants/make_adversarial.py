#!/usr/bin/env python3
"""Writes eval/tenants/adversarial.jsonl: wrong sentences made by perturbing real fact answers of
the evaluation tenants (amounts, currencies, magnitudes, periods, percentages, counts, number
words, polarity, names, products, certification levels, e-mails). Each line:
{"tenant", "fact", "type", "original", "sentence"}. Deterministic; rerun after editing facts:
    python3 eval/tenants/make_adversarial.py
The guard must release none of them when the generator says them (tests/adversarial.rs)."""
import json
import re
from pathlib import Path

HERE = Path(__file__).parent
TENANTS = ["gusto", "bitwarden", "bigcommerce", "zohobooks", "pipedrive", "sentry",
           "dropboxsign", "helpscout", "calendly", "calendly-b", "mailchimp", "netlify"]
WORDS = {2: "two", 3: "three", 5: "five", 6: "six", 7: "seven", 10: "ten", 12: "twelve",
         15: "fifteen", 20: "twenty", 25: "twenty-five", 30: "thirty", 40: "forty", 45: "forty-five",
         50: "fifty", 60: "sixty", 90: "ninety"}
PRODUCTS = ["Pipedrive", "Freshbooks", "Workday", "Dynamics", "Okta Verify", "Shopify Plus",
            "Magento", "NetSuite", "Rippling", "Dashlane"]
NAMES = ["Bob Smith", "Priya Nair", "Tom Becker", "Lena Ortiz"]
PERIODS = [("per month", "per year"), ("a month", "a year"), ("monthly", "annually"),
           ("per year", "per month"), ("a year", "a month"), ("annually", "monthly")]


def sentences(text):
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]


def perturb(s, fact_text, own_names=()):
    out = []
    nums_in_fact = set(re.findall(r"\d+(?:\.\d+)?", fact_text.replace(",", "")))
    m = re.search(r"\$(\d+(?:\.\d+)?)", s)
    if m:
        v = float(m.group(1))
        for nv in (v * 2 + 1, v + 7):
            t = f"{nv:g}"
            if t not in nums_in_fact:
                out.append(("amount", s[:m.start()] + f"${t}" + s[m.end():]))
                break
        out.append(("currency", s[:m.start()] + f"€{m.group(1)}" + s[m.end():]))
        if v > 0:
            out.append(("magnitude", s[:m.end()] + "k" + s[m.end():]))
        out.append(("currency", s[:m.start()] + f"{m.group(1)} euros" + s[m.end():]))
    for a, b in PERIODS:
        if a in s and b not in fact_text:
            out.append(("period", s.replace(a, b, 1)))
            break
    m = re.search(r"(\d+(?:\.\d+)?)\s?(%| percent)", s)
    if m:
        nv = f"{float(m.group(1)) + 15:g}"
        out.append(("percent", s[:m.start()] + f"{nv} per cent" + s[m.end():]))
    m = re.search(r"\b(\d+)[- ](day|days|month|months|year|years|hour|hours|user|users|seats?)\b", s)
    if m and not s[max(0, m.start() - 1):m.start()] == "$":
        n = int(m.group(1))
        nv = n * 3 + 1
        if str(nv) not in nums_in_fact:
            out.append(("count", s[:m.start()] + f"{nv}{s[m.end(1):m.end(1)+1]}{m.group(2)}" + s[m.end():]))
        for k, w in WORDS.items():
            if k != n and str(k) not in nums_in_fact and w not in fact_text.lower():
                out.append(("number_word", s[:m.start()] + f"{w}{s[m.end(1):m.end(1)+1]}{m.group(2)}" + s[m.end():]))
                break
    if re.search(r"\b(is|are|does|do|can) not\b", s):
        out.append(("polarity", re.sub(r"\b(is|are|does|do|can) not\b", r"\1", s, count=1)))
    elif re.search(r"\bcannot\b", s):
        out.append(("polarity", s.replace("cannot", "can", 1)))
    elif re.search(r"\b(is|are) (included|available|supported|free)\b", s):
        out.append(("polarity", re.sub(r"\b(is|are) (included|available|supported|free)\b", r"\1 not \2", s, count=1)))
    m = re.search(r"\bType (II|2)\b", s)
    if m:
        out.append(("certification", s[:m.start()] + ("Type I" if m.group(1) == "II" else "Type 1") + s[m.end():]))
    m = re.search(r"\bISO(?:/IEC)? (\d{5})\b", s)
    if m:
        for alt in ("27017", "27018", "27701", "9001", "22301"):
            if alt not in fact_text:
                out.append(("certification", s[:m.start(1)] + alt + s[m.end(1):]))
                break
    m = re.search(r"\b([a-z0-9._-]+)@([a-z0-9.-]+)\b", s)
    if m:
        out.append(("email", s[:m.start()] + "sales." + m.group(1) + "@" + m.group(2) + s[m.end():]))
    # Products and names: a capitalised word mid-sentence swapped for one the fact never uses.
    caps = [w for w in re.findall(r"(?<=\s)([A-Z][a-z]{3,})\b", s)]
    if caps:
        for p in PRODUCTS:
            # A product the tenant is (Pipedrive's own name) would make a true sentence.
            if p.lower() not in fact_text.lower() and p.lower() not in own_names:
                out.append(("product", re.sub(r"\b" + caps[0] + r"\b", p, s, count=1)))
                break
    return out


def main():
    rows = []
    for t in TENANTS:
        facts = [json.loads(l) for l in (HERE / t / "kb" / "facts.jsonl").open() if l.strip()]
        yaml = (HERE / t / "kb" / "tenant.yaml").read_text()
        m = re.search(r"^names:\s*\[(.*)\]", yaml, re.M)
        own = {n.strip().strip("'\"").lower() for n in m.group(1).split(",")} if m else set()
        for f in facts:
            for n, s in enumerate(sentences(f["answer"])):
                for kind, bad in perturb(s, f["answer"], own):
                    # One product swap per fact keeps the types balanced.
                    if bad != s and (kind != "product" or n == 0):
                        rows.append({"tenant": t, "fact": f["id"], "type": kind, "original": s, "sentence": bad})
        reps = [l.split(",") for l in (HERE / t / "kb" / "reps.csv").open().read().splitlines()[1:] if l]
        accounts = [l.split(",") for l in (HERE / t / "kb" / "accounts.csv").open().read().splitlines()[1:] if l]
        for i, a in enumerate(accounts):
            owner = next((r for r in reps if r[0] == a[2]), None)
            if owner is None:
                continue
            s = f"{owner[1]} is the account owner for {a[0]}."
            wrong = NAMES[i % len(NAMES)]
            rows.append({"tenant": t, "fact": f"account:{a[0]}", "type": "name", "original": s,
                         "sentence": f"{wrong} is the account owner for {a[0]}."})
            first = owner[1].split()[0]
            other = next(r for r in reps if r[0] != owner[0])
            rows.append({"tenant": t, "fact": f"account:{a[0]}", "type": "name", "original": s,
                         "sentence": f"{other[1].split()[0]} will be your account owner."})
            rows.append({"tenant": t, "fact": f"account:{a[0]}", "type": "email", "original": s,
                         "sentence": f"You can reach {first} at {owner[2].split('@')[0][2:]}@{owner[2].split('@')[1]}."})
    out = HERE / "adversarial.jsonl"
    with out.open("w") as o:
        for r in rows:
            o.write(json.dumps(r) + "\n")
    kinds = {}
    for r in rows:
        kinds[r["type"]] = kinds.get(r["type"], 0) + 1
    print(len(rows), "sentences:", ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))


if __name__ == "__main__":
    main()
