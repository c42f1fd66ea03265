"""Live routing quality: a policy trained by `thinkroute train`, served by the real stack, on held-out questions.

The deployment: router/configs/replay_gsm8k_6sys.yaml, six GSM8K systems (four GPT-3, Mixtral, GPT-4) as
replay workers answering with their recorded solutions, and a real SmolLM2-135M drafter on vLLM whose
hidden states the served probe reads over the HiddenState RPC; Ray Serve router, gRPC ingress.

    1. split   the dev outcome file by route-eval's documented split (sha256 of the question; 30 % held out)
    2. train   `thinkroute train` on the train split, three times: the probe (SmolLM2 layers 2, 4, 8 x last/mean,
               as in route-eval's gsm8k_6sys config), and the same policy on noise and on prompt length alone.
               Labels: the recorded outcomes of the train split read directly (the replay workers answer with
               exactly those recorded solutions, so collecting through the stack would return the same labels).
    3. serve   `thinkroute serve` on the replay config (pacing off: this bench measures accuracy and cost),
               each artifact swapped in with `thinkroute policy reload` (the admin RPC).
    4. send    every held-out question at each policy's operating points: the dials train.json lists for
               route-eval's log-cost quantiles, fixed on the training rows; and once per system with the model
               fixed (the single-plan points).
    5. score   a request is correct when the chosen system's recorded answer is (the answer that came back
               is checked to be that recorded solution); cost = the trace's tokens per model x the config's
               prices. Area, APGR and cost to reach the best plan's accuracy by router/policy/metrics.py,
               against always-cheapest and always-best (the cheapest / most accurate system on the train
               split), random at matched cost (the chord between them: APGR 0.5), the best single plan,
               and the noise / length policies; the offline CV estimate from train.json beside each.

    python ops/bench/live_routing.py --json docs/bench/live_routing.json --plot docs/bench/live_routing.png
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA = "../shared/data/routing/gsm8k_6sys_outcomes.dev.jsonl"
CONFIG = "router/configs/replay_gsm8k_6sys.yaml"
PROBE_ARGS = ["--layers", "2", "4", "8", "--pooling", "last", "mean", "--max-tokens", "256", "--no-uncertainty"]
METHODS = {"probe": ["--features", "local", *PROBE_ARGS], "noise": ["--features", "noise"], "length": ["--features", "length"]}
TOKEN = "live-routing-bench-admin-token"


def sh(cmd: list[str], **kw) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, **kw)


def split(out: Path) -> tuple[Path, Path]:
    from router.commands.route_eval import make_split

    return make_split(DATA, str(out / "split"), None, 0.3, "question")


def train(out: Path, train_file: Path, reuse: bool) -> dict[str, Path]:
    arts = {}
    for name, extra in METHODS.items():
        art = out / name
        done = art / "train.json"
        if not (reuse and done.exists() and "operating_points" in json.loads(done.read_text())):
            sh([sys.executable, "-m", "router.cli", "train", "--config", CONFIG, "--outcomes", str(train_file), "--out", str(art),
                "--no-progress", *extra, *(["--minilm"] if name == "probe" else [])])
        arts[name] = art.resolve()
    return arts


def write_config(out: Path, artifact: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((REPO / CONFIG).read_text())
    for pool in cfg["models"].values():
        if pool.get("backend") == "replay":
            pool["replay"] = {**pool["replay"], "tokens_per_s": 0, "ttft_ms": 0}
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import free_port

    cfg["serve"] = {**cfg.get("serve", {}), "grpc_port": free_port(), "http_port": free_port()}
    cfg["policy"]["artifact"] = str(artifact)
    cfg["run_dir"] = str(out / "serve")
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start(config: Path, out: Path, timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """The stack of `config`, with the admin token this benchmark reloads policies with."""
    from router.serve_process import start_serve

    return start_serve(config, out, timeout_s, env={**os.environ, "THINKROUTE_ADMIN_TOKEN": TOKEN})


def stop(proc: subprocess.Popen) -> None:
    from router.serve_process import stop_serve

    stop_serve(proc)


def send_all(address: str, rows: list[dict], dial: float | None, model: str | None, tag: str, concurrency: int,
             max_tokens: int = 512) -> list[dict]:
    """Every row's question through the router's gRPC Generate (at `dial`, or with `model` fixed): the model
    that answered, the trace's usage per model, the text and the prediction source. Three tries per request;
    errors are counted, not raised."""
    import grpc
    from tqdm import tqdm

    from thinkroute.v1 import router_pb2 as rpb
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    channel = grpc.insecure_channel(address)
    stub = rpb_grpc.RouterStub(channel)

    def one(i_row):
        i, row = i_row
        req = rpb.RouteRequest(request_id=f"{tag}-{i}", query=row["question"], max_tokens=max_tokens)
        if dial is not None:
            req.dial = dial
        if model:
            req.model = model
        for attempt in range(3):
            try:
                resp = stub.Generate(req, metadata=[("application", "thinkroute")], timeout=120)
                break
            except grpc.RpcError as e:
                if attempt == 2:
                    return {"i": i, "error": f"{e.code().name}: {e.details()}"}
                time.sleep(1)
        used = resp.trace.plan.models.get("model", "")
        usage = {u.model: (u.prompt_tokens, u.generated_tokens) for u in resp.trace.usage}
        cands = resp.trace.plan.candidates  # a Struct (may hold Infinity: lambda at dial 0), read field by field
        src = cands["predictions"]["source"] if "predictions" in cands.fields else ""
        return {"i": i, "plan": used, "usage": usage, "text": resp.text, "source": src}

    try:
        with ThreadPoolExecutor(concurrency) as ex:
            return list(tqdm(ex.map(one, enumerate(rows)), total=len(rows), desc=tag, leave=False))
    finally:
        channel.close()


def score(results: list[dict], rows: list[dict], prices) -> dict:
    """Mean cost and accuracy of one pass; how often the answer was not the recorded solution."""
    costs, correct, mismatch, errors, plans = [], [], 0, 0, {}
    for r in results:
        if "error" in r:
            errors += 1
            continue
        row = rows[r["i"]]
        rec = row[r["plan"]]
        correct.append(float(bool(rec["is_correct"])))
        if " ".join(r["text"].split()) != " ".join(str(rec.get("solution", "")).split())[: len(" ".join(r["text"].split()))]:
            mismatch += 1
        costs.append(sum(prices(m)[0] * p + prices(m)[1] * g for m, (p, g) in r["usage"].items()) / 1e6)
        plans[r["plan"]] = plans.get(r["plan"], 0) + 1
    return {"cost": float(np.mean(costs)) if costs else float("nan"), "acc": float(np.mean(correct)) if correct else float("nan"),
            "n": len(correct), "errors": errors, "not_recorded_answer": mismatch, "plans": plans}


def metrics(points: list[tuple[float, float]], lo: tuple[float, float], hi: tuple[float, float]) -> dict:
    from router.policy import metrics as M

    return {"area": M.area(points, lo[0], hi[0]), "apgr": M.apgr(points, lo[0], lo[1], hi[0], hi[1]),
            "cost_to_match_best_rel": M.cost_to_reach(points, hi[1]) / hi[0],
            "cost_to_95pct_best_rel": M.cost_to_reach(points, 0.95 * hi[1]) / hi[0]}


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from router.policy import metrics as M

    fig, ax = plt.subplots(figsize=(7, 5))
    colors = {"probe": "tab:blue", "noise": "tab:gray", "length": "gold"}
    for name, m in res["policies"].items():
        pts = [(p["cost"], p["acc"]) for p in m["points"]]
        h = M.hull(pts)
        ax.plot(h[:, 0], h[:, 1], "-", color=colors.get(name), lw=2 if name == "probe" else 1.2,
                label=f"{name} (live APGR {m['live']['apgr']:.2f})")
        ax.scatter(*zip(*pts), color=colors.get(name), s=14)
    for s, v in res["singles"].items():
        ax.scatter([v["cost"]], [v["acc"]], marker="x", color="k", s=25)
        ax.annotate(s, (v["cost"], v["acc"]), fontsize=6)
    lo, hi = res["references"]["always_cheapest"], res["references"]["always_best"]
    xs = np.linspace(lo["cost"], hi["cost"], 200)
    ax.plot(xs, lo["acc"] + (xs - lo["cost"]) / (hi["cost"] - lo["cost"]) * (hi["acc"] - lo["acc"]), "--", color="tab:red",
            lw=1, label="random at matched cost")
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per query (USD, log), through the stack")
    ax.set_ylabel("accuracy (held-out)")
    ax.set_title(f"GSM8K six-system replay deployment, {res['n_heldout']} held-out questions, live", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/live_routing", help="work directory (split, artifacts, logs)")
    ap.add_argument("--limit", type=int, help="a seeded sample of N held-out questions (default: all)")
    ap.add_argument("--quantiles", default="0,0.2,0.4,0.6,0.8,1.0", help="operating-point quantiles to serve (of train.json's)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--reuse", action="store_true", help="reuse artifacts already trained in --out")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="write the accuracy-vs-cost plot here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from router.commands.policy import reload_grpc
    from router.config import load_config
    from router.learn.outcomes import model_price

    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    train_file, held_file = split(out)
    arts = train(out, train_file, args.reuse)
    held = [json.loads(x) for x in held_file.read_text().splitlines() if x.strip()]
    if args.limit and args.limit < len(held):
        held = [held[i] for i in sorted(np.random.default_rng(0).choice(len(held), args.limit, replace=False))]
    config = load_config(CONFIG)
    prices = lambda m: model_price(config, m)  # noqa: E731
    infos = {k: json.loads((v / "train.json").read_text()) for k, v in arts.items()}
    want = [float(q) for q in args.quantiles.split(",")]
    res = {"n_heldout": len(held), "n_train": infos["probe"]["rows"], "labels": "recorded outcomes of the train split, read directly",
           "config": CONFIG, "replay_pacing": "off (tokens_per_s 0, ttft_ms 0)", "policies": {}, "singles": {}}
    cfg_path = write_config(out, arts["probe"])
    proc, address = start(cfg_path, out)
    t0 = time.monotonic()
    try:
        for name, art in arts.items():
            got = reload_grpc(address, str(art), TOKEN, timeout=300)
            print(f"serving {name}: {got}", file=sys.stderr)
            ops = [p for p in infos[name]["operating_points"] if any(abs(p["quantile"] - q) < 1e-6 for q in want)]
            dials = sorted({p["dial"] for p in ops})
            pts = []
            for d in dials:
                s = score(send_all(address, held, d, None, f"{name}-d{d:.4f}", args.concurrency), held, prices)
                s["dial"] = d
                pts.append(s)
                print(f"  {name} dial {d:.4f}: acc {s['acc']:.3f} cost ${s['cost']:.6f} plans {s['plans']} errors {s['errors']}",
                      file=sys.stderr)
            res["policies"][name] = {"artifact": str(art.relative_to(REPO)) if art.is_relative_to(REPO) else str(art),
                                     "operating_points": ops, "points": pts}
        for system in config.policy.candidates:
            s = score(send_all(address, held, None, system, f"single-{system}", args.concurrency), held, prices)
            res["singles"][system] = s
            print(f"  single {system}: acc {s['acc']:.3f} cost ${s['cost']:.6f}", file=sys.stderr)
    finally:
        stop(proc)
    res["serving_seconds"] = round(time.monotonic() - t0, 1)
    tr = infos["probe"]["cv"]["singles"]
    cheap = min(tr, key=lambda s: tr[s]["cost_per_query"])
    best = max(tr, key=lambda s: tr[s]["acc"])
    lo, hi = res["singles"][cheap], res["singles"][best]
    res["references"] = {"always_cheapest": {"system": cheap, **lo}, "always_best": {"system": best, **hi}}
    L, H = (lo["cost"], lo["acc"]), (hi["cost"], hi["acc"])
    for name, m in res["policies"].items():
        m["live"] = metrics([(p["cost"], p["acc"]) for p in m["points"]], L, H)
        cv = infos[name]["cv"]["methods"]["probe"]
        m["offline_cv"] = {"area": cv["area"], "apgr": cv["apgr"], "cost_to_match_best_rel": cv["cost_rel_to_match_best"]}
    singles = [(v["cost"], v["acc"]) for v in res["singles"].values()]
    res["baselines"] = {"always-cheapest": metrics([L], L, H), "always-best": metrics([H], L, H),
                        "random at matched cost": metrics([L, H], L, H), "best single plan (envelope)": metrics(singles, L, H)}
    res["target"] = {"apgr_live_above": 0.6, "met": bool(res["policies"]["probe"]["live"]["apgr"] > 0.6)}
    print(f"\n== live routing, {len(held)} held-out questions (train split {res['n_train']} rows) ==")
    print(f"{'method':32s} {'area':>7s} {'APGR':>7s} {'cost to match best':>19s} {'CV area':>8s} {'CV APGR':>8s}")
    for name, m in res["policies"].items():
        lv, cv = m["live"], m["offline_cv"]
        print(f"{name + ' (served)':32s} {lv['area']:7.4f} {lv['apgr']:7.3f} {lv['cost_to_match_best_rel']:19.3f} {cv['area']:8.4f} {cv['apgr']:8.3f}")
    for name, b in res["baselines"].items():
        print(f"{name:32s} {b['area']:7.4f} {b['apgr']:7.3f} {b['cost_to_match_best_rel']:19.3f}")
    print(f"target APGR > 0.6 live: {'met' if res['target']['met'] else 'not met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
    if args.plot:
        plot(res, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
