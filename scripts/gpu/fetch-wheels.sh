#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels scripts/gpu/serve.sh needs on the GPU machine, which
# has no registry and lacks these (it has anyio, h11, click, prometheus-client, httpx, aiohttp, uvloop).
#   bash scripts/gpu/fetch-wheels.sh [DEST [NAME==VERSION ...]]   DEST default: .whl (ignored by git; carry it to
#   the device); the names default to the serve set below (scripts/gpu/ray-prep.sh names its own: the Ray pack
#   brings starlette and uvicorn itself, and one version of each on the path is enough)
# starlette and uvicorn are pure Python; httptools (uvicorn's fast HTTP parser; without it uvicorn falls
# back to h11, slower per request) and orjson (JSON of the vectors, ~30x faster than json) are compiled,
# so their cp312 manylinux x86_64 wheels are fetched. Both are optional speed-ups.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-.whl}
shift || true
specs=("$@")
[ ${#specs[@]} -eq 0 ] && specs=(starlette==1.10.0 uvicorn==0.54.0 httptools==0.9.0 orjson==3.13.0)
mkdir -p "$dest"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" \
  "${specs[@]}"
for s in "${specs[@]}"; do
  n=${s%%[=<>]*}
  ls -1 "$dest" | grep -iE "^${n//-/_}-" || { echo "fetch-wheels: no wheel of $n in $dest" >&2; exit 1; }
done
