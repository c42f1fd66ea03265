"""Ray Serve calls thinkroute's autoscaling policy (router.ray_autoscaling.PoolPolicy) on a real Serve deployment.

A pool application `thinkroute-pool-large` whose deployment has `pool_autoscaling_config(...)` and whose replicas
report `pool_stats(...)`: the load of an idle worker (this test is about the policy hook, so the replicas hold no
model) plus the router's demand read from the real DemandBoard actor. With no request sent at all (no queue
anywhere), a demand of 100 tokens/s on the board takes the pool from 1 to 3 replicas (Ray's default policy,
ongoing requests per replica, would keep 1); with the demand back at 0 the policy holds for its
`downscale_delay_s` and Ray then returns the pool to 1. Real Ray (local, 2 CPUs) and Serve controller.
Marked slow to spare the default suite's budget: 49 s on the 2-core machine at load ~20 (2026-12-02; Ray
start-up 10 s, scale-up 1 -> 3 replicas 15.6 s after the demand report, back to 1 in 8.3 s, teardown 4 s).
"""
from __future__ import annotations

import glob
import os
import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

APP, POOL = "thinkroute-pool-large", "large"
AUTOSCALE = {"downscale_delay_s": 4.0,
             "pools": {POOL: {"capacity_tokens_per_s": 60.0, "target_utilisation": 0.7, "min_replicas": 1,
                              "max_replicas": 3}}}


def running(serve) -> int:
    app = serve.status().applications.get(APP)
    if app is None:
        return 0
    return sum(n for s, n in app.deployments["worker"].replica_states.items() if str(s).endswith("RUNNING"))


def wait_for(serve, n: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while running(serve) != n:
        assert time.monotonic() - t0 < timeout_s, f"pool did not reach {n} replicas in {timeout_s} s (has {running(serve)})"
        time.sleep(0.2)
    return time.monotonic() - t0


@pytest.fixture
def ray_serve():
    import ray
    from ray import serve

    env = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}  # inherited by the Ray processes
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        serve.start()
        yield ray, serve
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def test_ray_serve_scales_a_pool_with_thinkrouters_policy_on_the_routers_demand(ray_serve):
    ray, serve = ray_serve
    from router import ray_autoscaling as ra

    class Worker:
        async def __call__(self) -> str:
            return "ok"

        async def record_autoscaling_stats(self) -> dict[str, float]:
            from thinkroute.v1 import worker_pb2 as wpb

            from router.ray_autoscaling import pool_stats

            return await pool_stats(POOL, wpb.LoadResponse(running=0, queued=0, max_concurrency=8))

    config = ra.pool_autoscaling_config(POOL, AUTOSCALE, look_back_period_s=2.0)
    assert config["policy"]["policy_function"] == ra.POOL_POLICY
    board = ra._board(True)  # as a router replica creates it
    ray.get(board.report.remote("router-a", {POOL: 0.0}, 3600.0))
    deployment = serve.deployment(Worker, name="worker", ray_actor_options={"num_cpus": 0},
                                  autoscaling_config=config)
    serve.run(deployment.bind(), name=APP, route_prefix=None)
    wait_for(serve, 1, 60)

    ray.get(board.report.remote("router-a", {POOL: 100.0}, 3600.0))  # a dial change: 100 tokens/s predicted
    up_s = wait_for(serve, 3, 90)  # 100 / (60 x 0.7) -> 3, with no request sent
    ray.get(board.report.remote("router-a", {POOL: 0.0}, 3600.0))
    t0 = time.monotonic()
    wait_for(serve, 1, 90)
    down_s = time.monotonic() - t0
    assert down_s >= AUTOSCALE["downscale_delay_s"]  # held by the policy, not by Ray (its delays are 0)
    logs_dir = ray._private.worker._global_node.get_logs_dir_path()  # this test's Ray, whatever else runs
    logs = "".join(open(f).read() for f in glob.glob(os.path.join(logs_dir, "serve", "controller_*.log")))
    assert "pool large: 3 replicas (demand" in logs
    print(f"scale-up 1 -> 3 in {up_s:.1f} s after the demand report; back to 1 in {down_s:.1f} s")
