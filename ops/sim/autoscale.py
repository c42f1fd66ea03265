"""Autoscaling simulator: replay arrival traces against scaling policies and report SLO attainment and replica-seconds.

    python ops/sim/autoscale.py --calibration docs/bench/autoscale_calibration.json \
        --out docs/bench/autoscale.json --plot docs/bench/autoscale.png

What it models (a discrete-time simulation, `--dt` seconds per step, seeded):
- Two pools, `drafter` and `reasoner`, whose replicas have the cold start and capacity measured on this machine by
  ops/sim/calibrate.py (a vLLM worker's start-to-serving time; generated tokens/s alone and at a batch of 16).
  A replica runs up to `--max-concurrency` requests, each progressing at min(single-stream rate, batched
  capacity / running); a request's pool call also waits its measured time to first token. Requests beyond every
  replica's slots queue at the pool (router-side, FIFO); past `--max-queue` per replica they are shed.
- Requests: arrival traces (`bursty`: Poisson base rate with 4x bursts; `diurnal`: a sinusoidal day compressed into
  the run; `dialstep`: a constant rate), each with a dial change mid-trace (`--dial-from` -> `--dial-to`). The dial
  sets the plan mix (the embedded config's policy candidates and their token priors): the share of plans using the
  reasoner grows with the dial. A plan's pool calls run one after the other (e.g. specreason: drafter, then reasoner).
- SLO: a request meets it when it finishes within `--slo-factor` x its plan's latency on idle replicas (shed = missed).
- Policies, each deciding every `--interval` s; new replicas serve after the measured cold start; removed replicas
  finish their requests first; every replica-second (starting, serving, draining) is counted:
  * `static-mean` / `static-peak`: replicas fixed for the trace's mean / peak demand (tokens/s at 70 % of capacity);
  * `ray-default`: Ray Serve's default policy (target_ongoing_requests=2, look_back_period_s=30,
    upscale_delay_s=30, downscale_delay_s=600); `ray-target-8`: the same with target_ongoing_requests=8;
  * `coupled`: router/autoscale.py (the code the Cluster service runs): demand predicted from the plans chosen,
    queue, and call latency p95 against the SLO; down after 60 s of lower asks (`autoscale.downscale_delay_s`);
    `coupled-hold-600`: the same with Ray's 600 s downscale delay.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from router.autoscale import Autoscaler, PlanMix, PoolObservation, PoolTarget  # noqa: E402

POOLS = ("drafter", "reasoner")
MODEL_OF = {"drafter": "smollm2-135m", "reasoner": "gemma3-270m"}
#: The embedded config's policy candidates: generated tokens per pool (router/configs/embedded.yaml priors),
#: in the order their pool calls run.
PLANS: dict[str, list[tuple[str, int]]] = {
    "drafter": [("drafter", 128)],
    "reasoner": [("reasoner", 128)],
    "specreason": [("drafter", 128), ("reasoner", 32)],
    "hawkeye": [("reasoner", 96), ("drafter", 64)],
}


def plan_mix(dial: float) -> dict[str, float]:
    """Share of each plan at a dial: reasoner-using plans grow with it (drafter 1 - d, the rest split 2:1:1)."""
    return {"drafter": 1 - dial, "reasoner": dial / 2, "specreason": dial / 4, "hawkeye": dial / 4}


@dataclass
class PoolModel:
    """One pool's replica behaviour, from calibration."""

    cold_start_s: float
    single_tps: float
    batched_tps: float
    ttft_s: float

    def rate(self, running: int) -> float:
        """Tokens/s one request gets on a replica running `running` requests."""
        return min(self.single_tps, max(self.batched_tps, self.single_tps) / max(1, running))


@dataclass
class Call:
    req: "Request"
    tokens_left: float
    wait_left: float
    t0: float = 0.0
    """When the call was submitted to its pool (its latency is measured from here)."""


@dataclass
class Request:
    arrival: float
    plan: str
    stage: int = 0
    done_at: float | None = None
    shed: bool = False


@dataclass
class Replica:
    ready_at: float
    running: list = field(default_factory=list)
    draining: bool = False


@dataclass
class PoolState:
    model: PoolModel
    replicas: list[Replica] = field(default_factory=list)
    queue: deque = field(default_factory=deque)
    replica_seconds: float = 0.0
    latencies: deque = field(default_factory=lambda: deque(maxlen=2000))  # (finish time, call latency s)

    def serving(self, now: float) -> list[Replica]:
        return [r for r in self.replicas if r.ready_at <= now and not r.draining]

    def ongoing(self) -> int:
        return sum(len(r.running) for r in self.replicas) + len(self.queue)


def make_trace(kind: str, duration: float, base_rate: float, seed: int) -> list[float]:
    """Arrival times: non-homogeneous Poisson by thinning."""
    rng = random.Random(seed)

    def rate(t: float) -> float:
        if kind == "bursty":
            return base_rate * (4.0 if (t % 300.0) < 60.0 and t >= 60.0 else 1.0)
        if kind == "diurnal":
            return base_rate * (1.0 + 0.8 * math.sin(2 * math.pi * t / duration - math.pi / 2))
        return base_rate

    peak = base_rate * 4.0
    t, out = 0.0, []
    while True:
        t += rng.expovariate(peak)
        if t >= duration:
            return out
        if rng.random() < rate(t) / peak:
            out.append(t)


class Policy:
    name = "policy"

    def decide(self, now: float, sim: "Sim") -> dict[str, int]:
        raise NotImplementedError


class Static(Policy):
    def __init__(self, name: str, counts: dict[str, int]) -> None:
        self.name, self.counts = name, counts

    def decide(self, now, sim):
        return dict(self.counts)


class RayDefault(Policy):
    """Ray Serve's default autoscaling policy: desired = ceil(mean ongoing requests over the look-back / target),
    a scale decision only after it held for upscale_delay_s / downscale_delay_s."""

    def __init__(self, name: str, target: float = 2.0, look_back_s: float = 30.0, up_delay_s: float = 30.0,
                 down_delay_s: float = 600.0, bounds: tuple[int, int] = (1, 8)) -> None:
        self.name, self.target, self.look_back_s = name, target, look_back_s
        self.up_delay_s, self.down_delay_s, self.bounds = up_delay_s, down_delay_s, bounds
        self.samples: dict[str, deque] = {p: deque() for p in POOLS}
        self.since: dict[str, tuple[int, float] | None] = {p: None for p in POOLS}

    def observe(self, now: float, sim: "Sim") -> None:
        for p in POOLS:
            s = self.samples[p]
            s.append((now, sim.pools[p].ongoing()))
            while s and s[0][0] < now - self.look_back_s:
                s.popleft()

    def decide(self, now, sim):
        out = {}
        for p in POOLS:
            cur = sim.target[p]
            s = self.samples[p]
            mean = sum(v for _, v in s) / len(s) if s else 0.0
            want = min(self.bounds[1], max(self.bounds[0], math.ceil(mean / self.target - 1e-9)))
            if want == cur:
                self.since[p] = None
                out[p] = cur
                continue
            direction = 1 if want > cur else -1
            if self.since[p] is None or self.since[p][0] != direction:
                self.since[p] = (direction, now)
            delay = self.up_delay_s if direction > 0 else self.down_delay_s
            out[p] = want if now - self.since[p][1] >= delay else cur
            if out[p] == want:
                self.since[p] = None
        return out


class Coupled(Policy):
    """router/autoscale.py, fed as the router feeds it: plans at planning time, queue and latency p95 of calls."""

    name = "coupled"

    def __init__(self, targets: dict[str, PoolTarget], window_s: float = 20.0, downscale_delay_s: float = 60.0,
                 name: str = "coupled") -> None:
        self.name = name
        priors = {plan: {pool: float(n) for pool, n in stages} for plan, stages in PLANS.items()}
        self.mix = PlanMix(priors, window_s=window_s, clock=lambda: self.now)
        self.scaler = Autoscaler(targets, downscale_delay_s)
        self.now = 0.0

    def planned(self, now: float, plan: str) -> None:
        self.now = now
        self.mix.observe_plan(plan, [pool for pool, _ in PLANS[plan]])

    def decide(self, now, sim):
        self.now = now
        demand = self.mix.demand()
        obs = {}
        for p in POOLS:
            st = sim.pools[p]
            lat = sorted(l for t, l in st.latencies if t >= now - 30.0)
            p95 = lat[int(0.95 * (len(lat) - 1))] * 1e3 if lat else 0.0
            running = sum(len(r.running) for r in st.replicas)
            obs[p] = PoolObservation(replicas=len(st.serving(now)), running=running, waiting=len(st.queue),
                                     max_concurrency=sim.max_concurrency, latency_p95_ms=p95,
                                     demand_tokens_per_s=demand.get(p, 0.0))
        decisions = self.scaler.step(now, obs, dict(sim.target))
        return {p: d.desired for p, d in decisions.items()}


class Sim:
    def __init__(self, models: dict[str, PoolModel], policy: Policy, arrivals: list[float], dial_at, *,
                 dt: float, interval: float, max_concurrency: int, max_queue: int, slo_factor: float,
                 initial: dict[str, int], seed: int) -> None:
        self.models, self.policy, self.dt, self.interval = models, policy, dt, interval
        self.max_concurrency, self.max_queue, self.slo_factor = max_concurrency, max_queue, slo_factor
        self.pools = {p: PoolState(models[p]) for p in POOLS}
        self.target = dict(initial)
        for p in POOLS:
            self.pools[p].replicas = [Replica(ready_at=0.0) for _ in range(initial[p])]
        self.rng = random.Random(seed)
        self.arrivals, self.dial_at = arrivals, dial_at
        self.requests: list[Request] = []
        self.timeline: list[tuple[float, int, int]] = []

    def idle_latency(self, plan: str) -> float:
        return sum(self.models[p].ttft_s + n / self.models[p].single_tps for p, n in PLANS[plan])

    def _choose(self, dial: float) -> str:
        mix = plan_mix(dial)
        x, acc = self.rng.random(), 0.0
        for plan, share in mix.items():
            acc += share
            if x < acc:
                return plan
        return "drafter"

    def _submit(self, now: float, req: Request) -> None:
        pool_name, tokens = PLANS[req.plan][req.stage]
        st = self.pools[pool_name]
        if len(st.queue) >= self.max_queue * max(1, len(st.serving(now))):
            req.shed = True
            return
        st.queue.append(Call(req, float(tokens), self.models[pool_name].ttft_s, now))

    def _apply(self, now: float, want: dict[str, int]) -> None:
        for p, n in want.items():
            st = self.pools[p]
            live = [r for r in st.replicas if not r.draining]
            if n > len(live):
                st.replicas += [Replica(ready_at=now + st.model.cold_start_s) for _ in range(n - len(live))]
            elif n < len(live):
                # remove the ones still starting first, then the least busy
                for r in sorted(live, key=lambda r: (r.ready_at <= now, len(r.running)))[: len(live) - n]:
                    r.draining = True
            self.target[p] = n

    def run(self, duration: float) -> dict:
        arrivals = deque(self.arrivals)
        next_decision = 0.0
        now = 0.0
        while now < duration or any(st.ongoing() for st in self.pools.values()):
            if now >= duration + 600:
                break
            while arrivals and arrivals[0] <= now:
                t = arrivals.popleft()
                req = Request(arrival=t, plan=self._choose(self.dial_at(t)))
                self.requests.append(req)
                if isinstance(self.policy, Coupled):
                    self.policy.planned(t, req.plan)
                self._submit(now, req)
            if isinstance(self.policy, RayDefault):
                self.policy.observe(now, self)
            if now >= next_decision and now < duration:
                self._apply(now, self.policy.decide(now, self))
                next_decision = now + self.interval
            for p, st in self.pools.items():
                serving = st.serving(now)
                # dispatch: the least-busy serving replica with a free slot
                while st.queue:
                    free = [r for r in serving if len(r.running) < self.max_concurrency]
                    if not free:
                        break
                    min(free, key=lambda r: len(r.running)).running.append(st.queue.popleft())
                for r in st.replicas:
                    n = len(r.running)
                    still = []
                    for c in r.running:
                        if c.wait_left > 0:
                            c.wait_left -= self.dt
                        else:
                            c.tokens_left -= st.model.rate(n) * self.dt
                        if c.tokens_left <= 0:
                            c.req.stage += 1
                            st.latencies.append((now, now - c.t0))
                            if c.req.stage < len(PLANS[c.req.plan]):
                                self._submit(now, c.req)
                            else:
                                c.req.done_at = now + self.dt
                        else:
                            still.append(c)
                    r.running = still
                st.replicas = [r for r in st.replicas if not (r.draining and not r.running)]
                if now < duration:
                    st.replica_seconds += len(st.replicas) * self.dt
            if now < duration:
                self.timeline.append((now, len(self.pools["drafter"].replicas), len(self.pools["reasoner"].replicas)))
            now += self.dt
        met = sum(1 for r in self.requests if r.done_at is not None and
                  r.done_at - r.arrival <= self.slo_factor * self.idle_latency(r.plan))
        lat = sorted(r.done_at - r.arrival for r in self.requests if r.done_at is not None)
        return {
            "requests": len(self.requests), "slo_attainment": met / max(1, len(self.requests)),
            "shed": sum(r.shed for r in self.requests),
            "p95_latency_s": lat[int(0.95 * (len(lat) - 1))] if lat else 0.0,
            "replica_seconds": {p: self.pools[p].replica_seconds for p in POOLS},
            "replica_seconds_total": sum(self.pools[p].replica_seconds for p in POOLS),
        }


def load_models(path: str | None) -> tuple[dict[str, PoolModel], dict]:
    cal = json.loads(Path(path).read_text())
    models = {}
    for pool, model in MODEL_OF.items():
        m = cal["models"][model]
        models[pool] = PoolModel(cold_start_s=m["cold_start_s"], single_tps=m["single"]["tokens_per_s"],
                                 batched_tps=m["batched"]["tokens_per_s"], ttft_s=m["single"]["mean_ttft_s"])
    return models, cal


def demand_tps(rate: float, dial: float) -> dict[str, float]:
    out = {p: 0.0 for p in POOLS}
    for plan, share in plan_mix(dial).items():
        for pool, n in PLANS[plan]:
            out[pool] += rate * share * n
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", required=True, help="JSON from ops/sim/calibrate.py")
    ap.add_argument("--traces", default="bursty,diurnal,dialstep", help="comma-separated: bursty, diurnal, dialstep")
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of arrivals per trace (default 1800)")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="base arrival rate, req/s (default: one drafter replica's batched capacity / 128 tokens)")
    ap.add_argument("--dial-from", type=float, default=0.2)
    ap.add_argument("--dial-to", type=float, default=0.8)
    ap.add_argument("--dt", type=float, default=0.25, help="simulation step, s")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between two scaling decisions")
    ap.add_argument("--max-concurrency", type=int, default=32, help="requests one replica runs at once (max_num_seqs)")
    ap.add_argument("--max-queue", type=int, default=64, help="waiting requests per serving replica before shedding")
    ap.add_argument("--slo-factor", type=float, default=2.0, help="SLO: finish within this x the idle-replica latency")
    ap.add_argument("--max-replicas", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON")
    ap.add_argument("--plot", default=None, help="write a PNG: replicas over time per policy and the summary")
    args = ap.parse_args(argv)
    from tqdm import tqdm

    models, cal = load_models(args.calibration)
    rate = args.rate or models["drafter"].batched_tps / 128.0
    util = 0.7
    targets = {}
    for p in POOLS:
        m = models[p]
        idle = m.ttft_s + 128 / m.single_tps
        targets[p] = PoolTarget(capacity_tokens_per_s=max(m.batched_tps, m.single_tps), target_utilisation=util,
                                latency_p95_ms=args.slo_factor * idle * 1e3, min_replicas=1,
                                max_replicas=args.max_replicas)
    results: dict = {"calibration": cal, "rate": rate, "args": vars(args), "traces": {}}
    timelines: dict = {}
    runs = [(t, pol) for t in args.traces.split(",") for pol in
            ("static-mean", "static-peak", "ray-default", "ray-target-8", "coupled", "coupled-hold-600")]
    for trace, pname in tqdm(runs, desc="simulating", unit="run"):
        arrivals = make_trace(trace, args.duration, rate, args.seed)
        mid = args.duration / 2

        def dial_at(t: float) -> float:
            return args.dial_from if t < mid else args.dial_to

        peak_rate = rate * (4.0 if trace == "bursty" else 1.8 if trace == "diurnal" else 1.0)
        mean_rate = len(arrivals) / args.duration
        mean_d = {p: (demand_tps(mean_rate, args.dial_from)[p] + demand_tps(mean_rate, args.dial_to)[p]) / 2 for p in POOLS}
        peak_d = {p: max(demand_tps(peak_rate, args.dial_from)[p], demand_tps(peak_rate, args.dial_to)[p]) for p in POOLS}

        def size(d: dict[str, float]) -> dict[str, int]:
            return {p: min(args.max_replicas, max(1, math.ceil(d[p] / (targets[p].capacity_tokens_per_s * util))))
                    for p in POOLS}

        policy: Policy = {
            "static-mean": lambda: Static("static-mean", size(mean_d)),
            "static-peak": lambda: Static("static-peak", size(peak_d)),
            "ray-default": lambda: RayDefault("ray-default", 2.0, bounds=(1, args.max_replicas)),
            "ray-target-8": lambda: RayDefault("ray-target-8", 8.0, bounds=(1, args.max_replicas)),
            "coupled": lambda: Coupled(targets),
            "coupled-hold-600": lambda: Coupled(targets, downscale_delay_s=600.0, name="coupled-hold-600"),
        }[pname]()
        initial = policy.counts if isinstance(policy, Static) else {p: 1 for p in POOLS}
        sim = Sim(models, policy, arrivals, dial_at, dt=args.dt, interval=args.interval,
                  max_concurrency=args.max_concurrency, max_queue=args.max_queue, slo_factor=args.slo_factor,
                  initial=initial, seed=args.seed + 1)
        res = sim.run(args.duration)
        if isinstance(policy, Static):
            res["replicas"] = policy.counts
        results["traces"].setdefault(trace, {})[pname] = res
        timelines[(trace, pname)] = sim.timeline
    print(f"base rate {rate:.3f} req/s; dial {args.dial_from} -> {args.dial_to} at {args.duration / 2:.0f} s; "
          f"SLO = {args.slo_factor}x idle latency")
    print("| trace | policy | requests | SLO attainment | shed | p95 latency s | replica-s drafter | replica-s reasoner | replica-s total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for trace, pols in results["traces"].items():
        for pname, r in pols.items():
            print(f"| {trace} | {pname} | {r['requests']} | {100 * r['slo_attainment']:.1f} % | {r['shed']} | "
                  f"{r['p95_latency_s']:.1f} | {r['replica_seconds']['drafter']:.0f} | "
                  f"{r['replica_seconds']['reasoner']:.0f} | {r['replica_seconds_total']:.0f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(results, timelines, args.plot)
    return 0


def plot(results: dict, timelines: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(results["traces"])
    fig, axes = plt.subplots(len(traces), 2, figsize=(13, 3.3 * len(traces)), squeeze=False)
    for i, trace in enumerate(traces):
        ax = axes[i][0]
        for pname in results["traces"][trace]:
            tl = timelines[(trace, pname)]
            ax.plot([t for t, _, _ in tl], [r for _, _, r in tl], label=pname, lw=1.2)
        ax.axvline(results["args"]["duration"] / 2, color="grey", ls=":", lw=1)
        ax.set_title(f"{trace}: reasoner replicas over time (dial change at the dotted line)")
        ax.set_xlabel("s")
        ax.set_ylabel("replicas")
        ax.legend(fontsize=7)
        ax = axes[i][1]
        pols = results["traces"][trace]
        xs = [pols[p]["replica_seconds_total"] for p in pols]
        ys = [100 * pols[p]["slo_attainment"] for p in pols]
        ax.scatter(xs, ys)
        for p, x, y in zip(pols, xs, ys):
            ax.annotate(p, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{trace}: SLO attainment vs replica-seconds")
        ax.set_xlabel("replica-seconds (both pools)")
        ax.set_ylabel("SLO attainment %")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
