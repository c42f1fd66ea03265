"""`thinkroute collect`: graders (table-driven), data loading, the runner against a hand-written fake router
(gRPC, in process), resume, and route-eval reading the written file."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from router.collect.dataset import load_queries
from router.collect.graders import extract_letter, extract_number, get_grader, grade_choice, grade_exact, grade_numeric
from router.collect.outcomes import OutcomeFile, format_summary, plan_cost, summarise

REPO = Path(__file__).resolve().parents[2]
SIX = REPO.parent / "shared" / "data" / "routing" / "gsm8k_6sys_outcomes.dev.jsonl"
SYSTEMS = ["6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification", "mixtral_8x7b_instruct",
           "gpt4_1106_preview"]


@pytest.mark.parametrize("text,gold,ok,answer", [
    ("so 9 * 2 = 18\n#### 18", "Janet ... \n#### 18", True, "18"),
    ("She makes $18 every day.\nA: 18", "A: 18", True, "18"),
    ("The answer is 1,234.", "#### 1234", True, "1,234"),
    ("\\boxed{42}", "42", True, "42"),
    ("first 3 then 7", "7", True, "7"),
    ("A: 17", "A: 18", False, "17"),
    ("no number here", "5", False, ""),
    ("#### -54", "#### -54", True, "-54"),
    ("#### 0.50", "#### 0.5", True, "0.50"),
])
def test_numeric(text, gold, ok, answer):
    assert grade_numeric(text, gold) == (ok, answer)


@pytest.mark.parametrize("text,gold,ok", [
    ("The answer is (B).", "B", True), ("Answer: C", "C", True), ("D. because ...", "D", True),
    ("(A)", "B", False), ("I think it is B", "B", True), ("nothing", "A", False),
])
def test_choice(text, gold, ok):
    assert grade_choice(text, gold)[0] is ok


@pytest.mark.parametrize("text,gold,ok", [
    ("Paul Benedict Cullen", "paul benedict cullen.", True), ("The Beatles", "Beatles", True),
    ("Beatles!", "The Rolling Stones", False), ("", "", False),
])
def test_exact(text, gold, ok):
    assert grade_exact(text, gold)[0] is ok


def test_get_grader_names_the_choices():
    with pytest.raises(ValueError, match="choice.*exact.*numeric"):
        get_grader("fuzzy")


def test_numeric_grader_agrees_with_the_recorded_labels_of_the_gpt3_systems():
    rows = [json.loads(line) for line in SIX.open()][:200]
    for s in SYSTEMS[:4]:  # the GSM8K paper's own grading: the number after "A:"
        assert all(grade_numeric(r[s]["solution"], r["ground_truth"])[0] == r[s]["is_correct"] for r in rows)
    assert extract_number(rows[0]["ground_truth"]) == "18" and extract_letter("Answer: (C)") == "C"


def test_load_queries_fields_and_errors(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "Q1?", "label": "A", "subject": "law"}\n{"prompt": "Q2?", "label": "B", "subject": "math"}\n')
    qs, fields = load_queries(p, grader="choice")
    assert fields.text == "prompt" and fields.gold == "label" and fields.task == "subject"
    assert [(q.text, q.gold, q.task, q.grader) for q in qs] == [("Q1?", "A", "law", "choice"), ("Q2?", "B", "math", "choice")]
    with pytest.raises(ValueError, match="no grader"):
        load_queries(p)
    with pytest.raises(ValueError, match="invalid grader"):
        load_queries(p, grader="fuzzy")
    with pytest.raises(ValueError, match="text field"):
        load_queries(p, grader="choice", text_field="question")


def test_plan_cost_uses_in_and_out_prices():
    prices = {"a": 1.0, "b": {"in": 10.0, "out": 30.0}}
    assert plan_cost(prices, [("a", 100, 50), ("b", 100, 200)]) == pytest.approx((150 * 1 + 100 * 10 + 200 * 30) / 1e6)
    assert plan_cost(prices, [("unpriced", 100, 100)]) == 0.0


# ---- the runner against a fake router -------------------------------------------------------------------
class FakeRouter:
    """Answers RouteRequest(model=<system>) with that system's recorded solution, like the replay deployment;
    NOT_FOUND for `fail_model`. Counts calls per model."""

    def __init__(self, rows: list[dict], fail_model: str = "") -> None:
        self.by_text = {r["question"]: r for r in rows}
        self.fail_model = fail_model
        self.calls: dict[str, int] = {}

    async def Generate(self, request, context):
        from thinkroute.v1 import router_pb2 as rpb

        self.calls[request.model] = self.calls.get(request.model, 0) + 1
        if request.model == self.fail_model:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no recorded answer")
        text = self.by_text[request.query][request.model]["solution"]
        n = len(text.split())
        trace = rpb.Trace(plan=rpb.Plan(strategy=request.strategy, models={"model": request.model}),
                          calls=[rpb.ModelCall(model=request.model, kind="generate", prompt_tokens=60, generated_tokens=n,
                                               latency_ms=120.0, time_to_first_token_ms=15.0)],
                          usage=[rpb.ModelUsage(model=request.model, prompt_tokens=60, generated_tokens=n, calls=1)],
                          stage_ms={"total": 130.0})
        return rpb.RouteResponse(request_id="r", text=text, finish_reason="stop", trace=trace)


def _run_collect(router: FakeRouter, queries, plans, out_path: Path, text_field="question", **kw):
    from thinkroute.v1 import router_pb2_grpc as rpb_grpc

    from router.collect.runner import collect

    async def go():
        server = grpc.aio.server()
        class Servicer(rpb_grpc.RouterServicer):
            async def Generate(self, request, context):
                return await router.Generate(request, context)

        rpb_grpc.add_RouterServicer_to_server(Servicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        out = OutcomeFile(out_path, text_field)
        try:
            return await collect(queries, plans, {s: 1.0 for s in SYSTEMS}, out, f"127.0.0.1:{port}", [],
                                 concurrency=4, timeout_s=10, **kw), out
        finally:
            out.close()
            await server.stop(0)
    return asyncio.run(go())


@pytest.fixture()
def six_rows():
    with SIX.open() as f:
        return [json.loads(next(f)) for _ in range(6)]


def _plans():
    from router.plan_schema import CandidatePlan

    return {s: CandidatePlan(strategy="direct", model=s) for s in SYSTEMS}


def test_collect_writes_graded_rows_and_resumes(tmp_path, six_rows):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in six_rows))
    queries, _ = load_queries(data, grader="numeric")
    out = tmp_path / "out.jsonl"
    router = FakeRouter(six_rows, fail_model="gpt4_1106_preview")
    stats, _ = _run_collect(router, queries[:4], _plans(), out)
    assert stats.failed == 4 and stats.written_queries == 0 and not out.read_text().strip()
    router.fail_model = ""
    stats, _ = _run_collect(router, queries[:4], _plans(), out)
    assert stats.written_queries == 4 and stats.failed == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for row, src in zip(sorted(rows, key=lambda r: r["question"]), sorted(six_rows[:4], key=lambda r: r["question"])):
        for s in SYSTEMS[:4]:
            assert row[s]["is_correct"] == src[s]["is_correct"] and row[s]["solution"] == src[s]["solution"]
        rec = row["gpt4_1106_preview"]
        assert rec["tokens"] == {"gpt4_1106_preview": len(rec["solution"].split())} and rec["prompt_tokens"] == 60
        assert rec["cost"] == pytest.approx((60 + len(rec["solution"].split())) / 1e6)
        assert rec["latency_ms"] == 130.0 and rec["ttft_ms"] == 15.0
    # Resume: the 4 done queries are skipped; only the 2 new ones run.
    before = sum(router.calls.values())
    stats, outfile = _run_collect(router, queries, _plans(), out)
    assert stats.skipped_queries == 4 and stats.written_queries == 2
    assert sum(router.calls.values()) - before == 2 * len(SYSTEMS)
    summary = summarise(list(outfile.rows.values()), SYSTEMS)
    assert [s["n"] for s in summary] == [6] * 6 and "gpt4_1106_preview" in format_summary(summary)


def test_resume_runs_only_missing_plans_and_compacts(tmp_path, six_rows):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in six_rows[:2]))
    queries, _ = load_queries(data, grader="numeric")
    out = tmp_path / "out.jsonl"
    router = FakeRouter(six_rows)
    _run_collect(router, queries, {k: v for k, v in _plans().items() if k != "gpt4_1106_preview"}, out)
    router.calls.clear()
    _run_collect(router, queries, _plans(), out)
    assert router.calls == {"gpt4_1106_preview": 2}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(set(SYSTEMS) <= set(r) for r in rows)


def test_budget_stops_starting_requests_and_a_rerun_finishes(tmp_path, six_rows):
    """stop_after_s (`collect --budget-s`, `router.learn.embedded --budget-s`): requests not started in time are not
    sent, their queries stay unwritten, and the next run does only those."""
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in six_rows))
    queries, _ = load_queries(data, grader="numeric")
    out = tmp_path / "out.jsonl"
    router = FakeRouter(six_rows)
    stats, _ = _run_collect(router, queries, _plans(), out, stop_after_s=0.0)
    assert stats.requests == 0 and stats.not_started == 6 * len(SYSTEMS) and stats.written_queries == 0
    assert not router.calls and not out.read_text().strip()
    stats, outfile = _run_collect(router, queries, _plans(), out, stop_after_s=60.0)
    assert stats.not_started == 0 and stats.written_queries == 6 and len(outfile.rows) == 6


def test_route_eval_reads_a_collected_file(tmp_path, six_rows):
    from router.policy.evaluate import config_for_data, load_outcomes

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in six_rows))
    queries, _ = load_queries(data, grader="numeric")
    out = tmp_path / "collected.jsonl"
    _run_collect(FakeRouter(six_rows), queries, _plans(), out)
    cfg = config_for_data(out)  # the shipped gsm8k_6sys routing config prices exactly these plans
    assert cfg.name == "gsm8k_6sys"
    got = load_outcomes(cfg, str(out), count_tokens=lambda texts: __import__("numpy").array([len(t.split()) for t in texts], float))
    assert got.correct.shape == (6, 6) and sorted(got.texts) == sorted(r["question"] for r in six_rows)
