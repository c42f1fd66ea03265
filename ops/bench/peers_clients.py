"""Clients of the peers benchmark (ops/bench/peers.py), one per wire protocol, each with a blocking call for
the interleaved latency rounds and async calls for the closed-loop and streaming phases:

- `HttpChat`: an OpenAI chat-completions endpoint (vLLM's server, LiteLLM, RouteLLM, thinkroute's HTTP ingress);
- `RouterGrpc`: thinkroute.v1.Router/Generate through a Ray Serve gRPC ingress;
- `WorkerGrpc`: thinkroute.v1.Worker/Generate on the worker itself.

Every request is a greedy (temperature 0) single-turn chat completion; a call returns latency in ms and the
generated token count reported by the server.
"""
from __future__ import annotations

import json
import time

MODEL = "smollm2-135m"
PROMPT = "Write a long story about a lighthouse."


class HttpChat:
    """An OpenAI chat-completions endpoint (one keep-alive connection for sequential calls)."""

    def __init__(self, base: str, model: str) -> None:
        import httpx

        self.base, self.model = base.rstrip("/"), model
        self.client = httpx.Client(base_url=self.base, timeout=300)

    def body(self, max_tokens: int, prompt: str = PROMPT) -> dict:
        return {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0}

    def call(self, max_tokens: int) -> tuple[float, int, str]:
        t = time.perf_counter()
        r = self.client.post("/v1/chat/completions", json=self.body(max_tokens))
        ms = (time.perf_counter() - t) * 1e3
        r.raise_for_status()
        d = r.json()
        return ms, int(d["usage"]["completion_tokens"]), d["choices"][0]["message"]["content"] or ""

    async def acall(self, client, max_tokens: int, prompt: str = PROMPT) -> int:
        r = await client.post(self.base + "/v1/chat/completions", json=self.body(max_tokens, prompt))
        r.raise_for_status()
        return int(r.json()["usage"]["completion_tokens"])

    async def astream(self, client, max_tokens: int, prompt: str) -> tuple[float, int]:
        """(TTFT ms, generated tokens) of one streamed request."""
        body = {**self.body(max_tokens, prompt), "stream": True, "stream_options": {"include_usage": True}}
        t = time.perf_counter()
        ttft, tokens = None, 0
        async with client.stream("POST", self.base + "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                d = json.loads(line[6:])
                if ttft is None and d.get("choices") and d["choices"][0].get("delta", {}).get("content"):
                    ttft = (time.perf_counter() - t) * 1e3
                if d.get("usage"):
                    tokens = int(d["usage"]["completion_tokens"])
        return (ttft if ttft is not None else (time.perf_counter() - t) * 1e3), tokens

    def close(self) -> None:
        self.client.close()


class RouterGrpc:
    """thinkroute.v1.Router/Generate through a Ray Serve gRPC ingress, the model fixed (plan: direct)."""

    def __init__(self, addr: str) -> None:
        import grpc
        from thinkroute.v1 import router_pb2_grpc as rpb_grpc

        self.addr = addr
        self.channel = grpc.insecure_channel(addr)
        self.stub = rpb_grpc.RouterStub(self.channel)

    @staticmethod
    def request(max_tokens: int, prompt: str = PROMPT):
        from thinkroute.v1 import router_pb2 as rpb
        from thinkroute.v1 import worker_pb2 as wpb

        return rpb.RouteRequest(messages=[wpb.ChatMessage(role="user", content=prompt)], model=MODEL,
                                max_tokens=max_tokens, temperature=0.0)

    @staticmethod
    def tokens(resp) -> int:
        return sum(c.generated_tokens for c in resp.trace.calls)

    def call(self, max_tokens: int) -> tuple[float, int, str]:
        t = time.perf_counter()
        resp = self.stub.Generate(self.request(max_tokens), metadata=[("application", "thinkroute")], timeout=300)
        return (time.perf_counter() - t) * 1e3, self.tokens(resp), resp.text

    async def acall(self, stub, max_tokens: int, prompt: str = PROMPT) -> int:
        resp = await stub.Generate(self.request(max_tokens, prompt), metadata=[("application", "thinkroute")],
                                   timeout=300)
        return self.tokens(resp)

    def astub(self, channel):
        from thinkroute.v1 import router_pb2_grpc as rpb_grpc

        return rpb_grpc.RouterStub(channel)

    def close(self) -> None:
        self.channel.close()


class WorkerGrpc:
    """thinkroute.v1.Worker/Generate on the worker itself (no router)."""

    def __init__(self, addr: str) -> None:
        import grpc
        from thinkroute.v1 import worker_pb2_grpc as pb_grpc

        self.addr = addr
        self.channel = grpc.insecure_channel(addr)
        self.stub = pb_grpc.WorkerStub(self.channel)

    @staticmethod
    def request(max_tokens: int, prompt: str = PROMPT):
        from thinkroute.v1 import worker_pb2 as pb

        return pb.GenerateRequest(
            prompt=pb.Prompt(chat=pb.ChatPrompt(messages=[pb.ChatMessage(role="user", content=prompt)],
                                                add_generation_prompt=True)),
            sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0))

    def call(self, max_tokens: int) -> tuple[float, int, str]:
        t = time.perf_counter()
        msgs = list(self.stub.Generate(self.request(max_tokens), timeout=300))
        ms = (time.perf_counter() - t) * 1e3
        return ms, msgs[-1].final.usage.generated_tokens, "".join(m.text_delta for m in msgs)

    async def acall(self, stub, max_tokens: int, prompt: str = PROMPT) -> int:
        final = None
        async for m in stub.Generate(self.request(max_tokens, prompt), timeout=300):
            if m.HasField("final"):
                final = m.final
        return final.usage.generated_tokens

    async def astream(self, stub, max_tokens: int, prompt: str) -> tuple[float, int]:
        t = time.perf_counter()
        ttft, final = None, None
        async for m in stub.Generate(self.request(max_tokens, prompt), timeout=300):
            if ttft is None and m.token_ids:
                ttft = (time.perf_counter() - t) * 1e3
            if m.HasField("final"):
                final = m.final
        return (ttft if ttft is not None else (time.perf_counter() - t) * 1e3), final.usage.generated_tokens

    def astub(self, channel):
        from thinkroute.v1 import worker_pb2_grpc as pb_grpc

        return pb_grpc.WorkerStub(channel)

    def close(self) -> None:
        self.channel.close()
