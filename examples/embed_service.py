"""Embedding trtrun in your own service: a small semantic-search API over Rotten Tomatoes sentences.

    trtrun export .data/minilm -o minilm.onnx && trtrun build minilm.onnx --hybrid -o minilm.plan
    python examples/embed_service.py minilm.plan --tokenizer .data/minilm --port 8090
    curl -s localhost:8090/search -d '{"query": "a moving family drama", "k": 3}'

What it shows:
- `Embedder` for offline work: the corpus is embedded once at start, in length-sorted packed batches.
- `MicroBatcher` for online work: each request's query goes through `batcher.submit`, so concurrent
  queries share engine batches; `asyncio.wrap_future` awaits the result without blocking the event loop.
- The batcher lives as long as the app (Starlette lifespan) and is drained on shutdown; uvicorn finishes
  requests in flight on SIGTERM/Ctrl-C.
Vectors are L2-normalized, so cosine similarity is a dot product.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import asynccontextmanager

import numpy as np


def build_app(embedder, corpus: list[str], *, max_wait_ms: float = 2.0):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from trtrun.errors import InputError
    from trtrun.serve import MicroBatcher

    vectors = embedder.embed(corpus)  # [n, dim] float32, row i for corpus[i]

    @asynccontextmanager
    async def lifespan(app):
        app.state.batcher = MicroBatcher(embedder, max_wait_ms=max_wait_ms)
        yield
        await asyncio.get_running_loop().run_in_executor(None, app.state.batcher.close)  # drain

    async def search(request):
        try:
            body = await request.json()
            query, k = body["query"], int(body.get("k", 5))
            if not isinstance(query, str) or not query or not 1 <= k <= 100:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send {"query": "non-empty text", "k": 1..100}'}, status_code=422)
        try:  # a query the tokenizer cannot take (not valid Unicode) fails alone, before it joins a batch
            result = await asyncio.wrap_future(request.app.state.batcher.submit([query]))
        except InputError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        scores = vectors @ result.embeddings[0]
        top = np.argsort(-scores)[:k]
        return JSONResponse({"query": query, "truncated": bool(result.truncated[0]),
                             "hits": [{"text": corpus[i], "score": round(float(scores[i]), 4)} for i in top]})

    return Starlette(routes=[Route("/search", search, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    ap = argparse.ArgumentParser(description="semantic search over Rotten Tomatoes sentences with trtrun")
    ap.add_argument("model", help="a .plan (or an .onnx: a hybrid plan is built and cached beside it)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (e.g. .data/minilm)")
    ap.add_argument("--corpus-size", type=int, default=2000)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    a = ap.parse_args()

    import uvicorn

    from trtrun import Embedder
    from trtrun.data import load_texts

    # GPU where usable, else the numpy reference backend; a long query is cut (the answer says so) rather
    # than refused, the Embedder's default
    embedder = Embedder(a.model, a.tokenizer, truncation="truncate")
    print(embedder)
    app = build_app(embedder, load_texts("rt", n=a.corpus_size, seed=0))
    try:
        uvicorn.run(app, host=a.host, port=a.port)
    finally:
        embedder.close()


if __name__ == "__main__":
    main()
