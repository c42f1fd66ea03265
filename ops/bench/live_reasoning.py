"""Live reasoning-mode routing: a policy over plans that differ by model and thinking level, served by the real stack.

The deployment: router/configs/reasoning_replay.yaml, nine plans of the reasoning outcome file (Claude Sonnet 4 with
thinking off / budget 1024 / budget 4096, Gemini 2.5 Flash off / 512 / 1024, GPT-5-mini low effort, Qwen3-8B off /
thinking) as replay workers, each answering with its recorded outcome and reporting its recorded output tokens
(thinking included), and a real SmolLM2-135M drafter on vLLM whose hidden states the served probe reads over the
HiddenState RPC; Ray Serve router, gRPC ingress.

    1. split   the dev outcome file by route-eval's documented split (sha256 of the question; 30 % held out)
    2. train   `thinkroute train` on the train split (the probe: SmolLM2 layers 2, 4, 8 x last/mean, as in
               route-eval's reasoning config), labels = the recorded outcomes of the train split read directly,
               each plan's generated tokens = its recorded output tokens (thinking included)
    3. serve   `thinkroute serve` on the replay config (pacing off: accuracy and cost only), the artifact loaded
               with `thinkroute policy reload`
    4. send    every held-out question (or a seeded sample) at the policy's operating points (the dials train.json
               lists, fixed on the training rows), and once per plan with the model fixed (the single plans)
    5. score   a request is correct when the plan that answered was graded correct on that question; cost = the
               trace's prompt and generated tokens per model x the config's input / output prices. The reading of
               route-eval's reasoning targets: the cost at which the served policy reaches the best single plan's
               accuracy (share of its cost) and its accuracy gain at no more than that plan's cost; which models
               and thinking levels it chose.

    python ops/bench/live_reasoning.py --limit 200 --json docs/bench/live_reasoning.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ops" / "bench"))
DATA = "../shared/data/routing/reasoning_outcomes.dev.jsonl"
CONFIG = "router/configs/reasoning_replay.yaml"
PROBE_ARGS = ["--features", "local", "--layers", "2", "4", "8", "--pooling", "last", "mean", "--max-tokens", "256", "--no-uncertainty"]
TOKEN = "live-reasoning-bench-admin-token"


def sh(cmd: list[str]) -> None:
    import subprocess

    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def training_file(config, train_split: Path, out: Path) -> Path:
    """The train split with, per candidate plan, `tokens` = {its model: recorded output tokens} (thinking included)."""
    path = out / "train_tokens.jsonl"
    with train_split.open() as f, path.open("w") as fo:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            new = {"id": row["id"], "question": row["question"]}
            for plan, cand in config.policy.candidates.items():
                rec = row[plan]
                new[plan] = {"is_correct": bool(rec["is_correct"]), "tokens": {cand.model: float(rec["output_tokens"])}}
            fo.write(json.dumps(new) + "\n")
    return path


#: Request max_tokens: above every recorded output of the nine plans (5,330 tokens), so no recorded count is cut.
MAX_TOKENS = 8192


def send_all(address: str, rows: list[dict], dial: float | None, model: str | None, tag: str, concurrency: int) -> list[dict]:
    """live_routing.send_all with a max_tokens above every recorded output (no recorded count is cut)."""
    import live_routing as LR

    return LR.send_all(address, rows, dial, model, tag, concurrency, max_tokens=MAX_TOKENS)


def score(results: list[dict], rows: list[dict], plan_of_model: dict[str, str], prices) -> dict:
    """Mean cost and accuracy of one pass; which plans answered; reasoning tokens reported."""
    costs, correct, errors, plans, gen = [], [], 0, {}, []
    for r in results:
        if "error" in r:
            errors += 1
            continue
        plan = plan_of_model[r["plan"]]
        correct.append(float(bool(rows[r["i"]][plan]["is_correct"])))
        costs.append(sum(prices(m)[0] * p + prices(m)[1] * g for m, (p, g) in r["usage"].items()) / 1e6)
        gen.append(sum(g for _, g in r["usage"].values()))
        plans[plan] = plans.get(plan, 0) + 1
    return {"cost": float(np.mean(costs)) if costs else float("nan"), "acc": float(np.mean(correct)) if correct else float("nan"),
            "n": len(correct), "errors": errors, "plans": plans, "generated_tokens_mean": float(np.mean(gen)) if gen else float("nan")}


def reading(points: list[tuple[float, float]], best: tuple[float, float]) -> dict:
    """Cost share at which the curve (hull of the points) reaches the best plan's accuracy; gain at its cost."""
    from router.policy import metrics as M

    rel = M.cost_to_reach(points, best[1]) / best[0]
    gain = float(M.curve_at(M.hull(points), best[0])) - best[1]
    return {"cost_rel_to_match_best": rel, "gain_at_best_cost": gain,
            "target_10pct_cost": bool(rel <= 0.10), "target_plus3_points": bool(gain >= 0.03)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/live_reasoning", help="work directory (split, artifact, logs)")
    ap.add_argument("--limit", type=int, help="a seeded sample of N held-out questions (default: all)")
    ap.add_argument("--quantiles", default="0,0.2,0.4,0.6,0.8,1.0", help="operating-point quantiles to serve (of train.json's)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--reuse", action="store_true", help="reuse the artifact already trained in --out")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops the run: still stop the stack (finally)
    import live_routing as LR  # the shared serve/send helpers of ops/bench/live_routing.py

    from router.commands.policy import reload_grpc
    from router.commands.route_eval import make_split
    from router.config import load_config
    from router.learn.outcomes import model_price

    LR.CONFIG, LR.TOKEN = CONFIG, TOKEN
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(REPO / CONFIG)
    train_split, held_file = make_split(DATA, str(out / "split"), None, 0.3, "question")
    train_file = training_file(config, train_split, out)
    art = out / "probe"
    if not (args.reuse and (art / "train.json").exists()):
        sh([sys.executable, "-m", "router.cli", "train", "--config", CONFIG, "--outcomes", str(train_file), "--out", str(art),
            "--no-progress", *PROBE_ARGS])
    info = json.loads((art / "train.json").read_text())
    held = [json.loads(x) for x in held_file.read_text().splitlines() if x.strip()]
    if args.limit and args.limit < len(held):
        held = [held[i] for i in sorted(np.random.default_rng(0).choice(len(held), args.limit, replace=False))]
    prices = lambda m: model_price(config, m)  # noqa: E731
    plan_of_model = {c.model: p for p, c in config.policy.candidates.items()}
    want = [float(q) for q in args.quantiles.split(",")]
    ops = [p for p in info["operating_points"] if any(abs(p["quantile"] - q) < 1e-6 for q in want)]
    res = {"n_heldout": len(held), "n_train": info["rows"], "config": CONFIG, "replay_pacing": "off (tokens_per_s 0, ttft_ms 0)",
           "labels": "recorded outcomes of the train split, read directly", "operating_points": ops, "points": [], "singles": {}}
    proc, address = LR.start(LR.write_config(out, art.resolve()), out)
    t0 = time.monotonic()
    try:
        print(f"serving: {reload_grpc(address, str(art.resolve()), TOKEN, timeout=300)}", file=sys.stderr)
        for d in sorted({p["dial"] for p in ops}):
            s = score(send_all(address, held, d, None, f"probe-d{d:.4f}", args.concurrency), held, plan_of_model, prices)
            s["dial"] = d
            res["points"].append(s)
            print(f"  dial {d:.4f}: acc {s['acc']:.3f} cost ${s['cost']:.6f} plans {s['plans']} errors {s['errors']}", file=sys.stderr)
        for plan, cand in config.policy.candidates.items():
            s = score(send_all(address, held, None, cand.model, f"single-{cand.model}", args.concurrency), held, plan_of_model, prices)
            res["singles"][plan] = s
            print(f"  single {plan}: acc {s['acc']:.3f} cost ${s['cost']:.6f} errors {s['errors']}", file=sys.stderr)
    finally:
        LR.stop(proc)
    res["serving_seconds"] = round(time.monotonic() - t0, 1)
    tr = info["cv"]["singles"]
    best = max(tr, key=lambda s: tr[s]["acc"])  # the most accurate plan on the train split
    cheap = min(tr, key=lambda s: tr[s]["cost_per_query"])
    B, L = res["singles"][best], res["singles"][cheap]
    res["references"] = {"best_plan": {"plan": best, **B}, "cheapest_plan": {"plan": cheap, **L}}
    pts = [(p["cost"], p["acc"]) for p in res["points"]]
    res["live"] = reading(pts, (B["cost"], B["acc"]))
    res["singles_envelope"] = reading([(v["cost"], v["acc"]) for v in res["singles"].values()], (B["cost"], B["acc"]))
    from router.policy import metrics as M

    res["live"]["area"] = M.area(pts, L["cost"], B["cost"])
    res["live"]["apgr"] = M.apgr(pts, L["cost"], L["acc"], B["cost"], B["acc"])
    cv = info["cv"]["methods"]["probe"]
    res["offline_cv"] = {k: cv.get(k) for k in ("area", "apgr", "cost_rel_to_match_best", "acc_at_best_cost")}
    print(f"\n== live reasoning routing, {len(held)} held-out questions (train split {res['n_train']} rows) ==")
    print(f"best plan {best}: acc {B['acc']:.3f} cost ${B['cost']:.6f}")
    for p in res["points"]:
        print(f"  dial {p['dial']:.4f}: acc {p['acc']:.3f} cost ${p['cost']:.6f} ({100 * p['cost'] / B['cost']:.1f}% of best)  plans {p['plans']}")
    lv = res["live"]
    print(f"served policy: reaches the best plan's accuracy at {100 * lv['cost_rel_to_match_best']:.1f}% of its cost "
          f"(target <= 10%: {'met' if lv['target_10pct_cost'] else 'not met'}); gain at <= its cost {100 * lv['gain_at_best_cost']:+.1f} points "
          f"(target +3: {'met' if lv['target_plus3_points'] else 'not met'}); area {lv['area']:.4f}, APGR {lv['apgr']:.3f}")
    se = res["singles_envelope"]
    print(f"single-plan envelope: match at {100 * se['cost_rel_to_match_best']:.1f}%, gain {100 * se['gain_at_best_cost']:+.1f} points")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
