"""A graded arithmetic set for the drafter's own correctness, seeded (the same rows on every machine).

    python ops/data/arith.py --n 180 --seed 0 --out runs/data/arith.jsonl
    python ops/data/arith.py --ops + --n 90 --out runs/data/add.jsonl        # additions only

Rows come from `router.learn.embedded.arith_set` (the set the embedded default's policy artifact is trained
on): operations x 1- to 3-digit operands in equal shares, 4-shot completion prompts ("... \\n123 + 45 ="), the
gold answer an integer, the task `<op><digits>` (e.g. `+3`). Each row also says how to grade it
(`"grader": "first_number"`), so `thinkroute collect --data FILE` needs no --grader.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def rows(n: int, seed: int, ops: str = "+-*") -> list[dict]:
    """`n` rows of the operations in `ops` (a subset of "+-*"), seeded; ids are the rows' positions."""
    sys.path.insert(0, str(REPO))
    from router.learn.embedded import arith_set

    bad = sorted(set(ops) - set("+-*"))
    if bad or not ops:
        raise ValueError(f"--ops takes characters of '+-*', got {ops!r}")
    out: list[dict] = []
    pool_n = n
    while len(out) < n:  # arith_set cycles the 9 (operation, digits) grades: draw enough, keep the wanted ops
        out = [r for r in arith_set(pool_n, seed) if r["task"][0] in ops][:n]
        pool_n *= 2
    return [{**r, "id": i, "grader": "first_number"} for i, r in enumerate(out)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=180, help="questions (default 180)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--ops", default="+-*", help="operations to include, e.g. + (default +-*)")
    ap.add_argument("--out", required=True, help="output file (JSON lines)")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be >= 1")
    try:
        data = rows(args.n, args.seed, args.ops)
    except ValueError as e:
        ap.error(str(e))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"{out}: {len(data)} questions (seed {args.seed}, ops {args.ops})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
