#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels scripts/gpu/serve.sh needs on the GPU machine, which
# has no registry and lacks these (it has anyio, h11, click, prometheus-client, httpx, aiohttp, uvloop).
#   bash scripts/gpu/fetch-wheels.sh [DEST]      DEST default: .whl (ignored by git; carry it to the device)
# starlette and uvicorn are pure Python; httptools (uvicorn's fast HTTP parser; without it uvicorn falls
# back to h11, slower per request) and orjson (JSON of the vectors, ~30x faster than json) are compiled,
# so their cp312 manylinux x86_64 wheels are fetched. Both are optional speed-ups.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-.whl}
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" \
  starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 orjson==3.13.0
ls -1 "$dest" | grep -E "^(starlette|uvicorn|httptools|orjson)-"
