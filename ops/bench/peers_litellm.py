"""LiteLLM arm of the peers benchmark: LiteLLM's `Router` (the library behind its proxy) with its default
routing strategy (`simple-shuffle`) over one deployment, vLLM's OpenAI server, behind a small FastAPI app on
loopback that speaks POST /v1/chat/completions (non-streaming) and GET /health.

Runs in the peers' own environment (.venv-peers, see ops/bench/peers_env.py), not in thinkroute's:

    .venv-peers/bin/python ops/bench/peers_litellm.py --port 8201 --api-base http://127.0.0.1:8100/v1
"""

import argparse
import os

#: Request fields passed on to LiteLLM; anything else in the body is ignored (request input is data).
FIELDS = ("model", "messages", "max_tokens", "temperature", "top_p", "stop", "seed", "n")


def build_app(api_base: str, model: str):
    import fastapi
    from fastapi.responses import JSONResponse
    from litellm import Router

    router = Router(
        model_list=[{"model_name": model,
                     "litellm_params": {"model": f"openai/{model}", "api_base": api_base, "api_key": "unused"}}],
        routing_strategy="simple-shuffle",
    )
    app = fastapi.FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: fastapi.Request):
        body = await request.json()
        if not isinstance(body, dict) or body.get("stream"):
            return JSONResponse({"error": {"message": "a JSON object without `stream` is expected"}}, status_code=400)
        kwargs = {k: body[k] for k in FIELDS if k in body}
        resp = await router.acompletion(**kwargs)
        return JSONResponse(resp.model_dump())

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-base", required=True, help="vLLM's OpenAI server, e.g. http://127.0.0.1:8100/v1")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the price list at import
    import uvicorn

    uvicorn.run(build_app(args.api_base, args.model), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
