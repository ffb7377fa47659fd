#!/usr/bin/env bash
# Issue 22's GPU acceptance in one device call (docs/ray.md, "Ray on the GPU machine"), once the Ray pack's
# parts are on the machine (the call before carried part 00: scripts/gpu/ray-prep.sh prints both calls):
#   1. Ray: put the parts together (.ray-pack/ or /tmp/ray-parts/), check the SHA-256, unpack to /tmp/ray-site;
#      install the carried wheels (.ray-gpu/whl: onnx-graphsurgeon, orjson); build trtrun as
#      tests/gpu/device_run.sh does (pip install -e ., the CUDA extension);
#   2. a BERT model of all-MiniLM-L6-v2's shape (6 x 384, 12 heads, its tokenizer) with random weights, exported
#      and built hybrid with the profile scripts/gpu/serve.sh uses (batch 1..128, 1..256 tokens). Random weights:
#      the GPU work does not depend on the values, so they run at the real model's speed, and every comparison
#      here loads the same folder on both sides; MiniLM's real weights (45 MB in fp16) do not fit the call
#      beside the Ray part and buy nothing for throughput (its GPU fidelity is results/serve-h200's);
#   3. `trtrun embed` of IMDB's 25,000 reviews (JSON lines with ids) as a user would run it for this model:
#      --max-seq-len 256 (sentence-transformers' max_seq_length for it) --truncation truncate, the defaults
#      otherwise (2 contexts, engine batches of up to 16,384 padded tokens and 128 rows, shards of 4,096 rows,
#      chunks of 1,024), in-process and with --ray (a local Ray: one GPU actor), alternated A B A B so that drift
#      shows, each a fresh process and a fresh output folder;
#   4. the sentence-transformers-style PyTorch fp16 baseline on the same texts (scripts/gpu/ray_accept.py
#      baseline: length-sorted batches of 64 = 16,384 / 256, and of 32, sentence-transformers' default, each
#      tokenized with the same truncation; mean pooling; normalized);
#   5. the vectors: in-process against Ray, each against its rerun (before the baseline), PyTorch against trtrun;
#   6. Ray Serve (`trtrun serve --ray`: trtrun's deployment, one replica on the GPU, and four sharing it) beside
#      `trtrun serve` with 1 and with 4 processes, under bench/loadgen.py: 64 loopback clients, 1 Rotten Tomatoes sentence a request,
#      LOAD_SECONDS each after 5 s of warm-up, every answer checked against its single-request embedding;
#   7. $OUT/summary.md (the table), $OUT/results.json (every number), $OUT/ray_log.txt (this log),
#      $OUT/load.json, $OUT/servers.log, $OUT/embed.log, $OUT/build.log.
# Budget: BUDGET seconds (540, inside the device tool's 600) from the start; every step says its elapsed time,
# runs under a limit of the time left, and a step that would not fit is skipped with a line saying so.
# Expected on an H100/H200: unpack ~15 s, build ~40 s (35 s seen on an H200), model ~30 s, each embed run
# ~20-45 s (25,000 reviews, 5.3M tokens: the GPU part is under 1 s, the rest is tokenizing, pooling on the host,
# Parquet and process start; Ray adds its start and the actor's), PyTorch ~30 s, serving ~2 min.
#
# RAY_SH_DRY=1: the same steps on this (GPU-less) machine, on the reference backend at a tiny size (300 reviews,
# a 2-layer model of width 32, 64 tokens, 3 shards, 3 s of load by 8 clients, trtrun serve with one process),
# Ray from the interpreter ($PYTHON, default python3), the pack only checked (not unpacked), nothing installed or
# built; OMP_NUM_THREADS=1, so that in-process and Ray vectors are bit-identical (docs/ray.md, "Same vectors").
#   PYTHON=/work/venv/bin/python RAY_SH_DRY=1 bash scripts/gpu/ray.sh
# Environment: OUT (out/ray), BUDGET, LOAD_SECONDS (20), CLIENTS (64), PROCS (8), N_TEXTS (all 25,000),
# RAY_PER_GPU ("1 4": a Ray Serve target per entry, with that many replicas sharing the GPU), RAY_HAPROXY=1 (each
# such target also behind Ray Serve's HAProxy ingress: `trtrun serve --ray --ray-haproxy`, docs/ray.md),
# RAY_EMBED_ARGS (more options of the `trtrun embed --ray` runs, e.g. "--ray-cpus-per-actor 8"), RAY_EMBED_ARGS_B
# (a second Ray variant with these options: runs rayb-1 and rayb-2 beside the others, its overhead apart), REPEAT
# (1: the corpus that many times over, e.g. 4 for 100,000 texts), SKIP (steps left out: "pytorch", "serve"),
# KEEP_WORK=1 (keep the scratch folder /tmp/raysh.*), PYSPY=1 (py-spy profiles of one in-process and one Ray
# run). Without the whole pack it stops at once (exit 3): the machine has no Ray, pyarrow, starlette or uvicorn of
# its own, and making both calls again is the fix.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DRY=${RAY_SH_DRY:-0}
OUT=${OUT:-$ROOT/out/ray}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
exec > >(tee "$OUT/ray_log.txt") 2>&1
T0=$SECONDS
RESERVE=20  # seconds kept for the summary at the end
W=$(mktemp -d /tmp/raysh.XXXXXX)
RES=$OUT/results.json
rm -f "$RES" "$OUT"/{summary.md,load.json,servers.log,embed.log,build.log}
# Ray's sessions under the scratch folder: a local Ray started here is found by nothing else, and finds nothing
# else (a Ray another user started on the same host, where the dry run runs)
export RAY_TMPDIR=$W/r PYTHONUNBUFFERED=1
mkdir -p "$RAY_TMPDIR"
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python3}
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
  BUDGET=${BUDGET:-600}; N_TEXTS=${N_TEXTS:-300}; MAX_SEQ=64; PROFILE="--min 1,1 --opt 8,64 --max 32,64"
  BACKEND=reference; SHARD_ROWS=100; PT_DEVICE=cpu; PT_DTYPE=fp32; PT_BATCHES="32"; TINY=--tiny
  LOAD_SECONDS=${LOAD_SECONDS:-3}; WARMUP=1; CLIENTS=${CLIENTS:-8}; PROCS=${PROCS:-1}; N_LOAD_TEXTS=50
  SERVE_WORKERS="1"; RAY_PER_GPU=${RAY_PER_GPU:-1}
else
  PY=python3
  BUDGET=${BUDGET:-540}; N_TEXTS=${N_TEXTS:-}; MAX_SEQ=256; PROFILE="--min 1,1 --opt 32,64 --max 128,256"
  BACKEND=gpu; SHARD_ROWS=4096; PT_DEVICE=cuda; PT_DTYPE=fp16; PT_BATCHES="64 32"; TINY=
  LOAD_SECONDS=${LOAD_SECONDS:-20}; WARMUP=5; CLIENTS=${CLIENTS:-64}; PROCS=${PROCS:-8}; N_LOAD_TEXTS=2000
  SERVE_WORKERS="1 4"; RAY_PER_GPU=${RAY_PER_GPU:-1 4}
fi
export ROOT DRY OUT W RES PY BACKEND MAX_SEQ PROFILE SHARD_ROWS N_TEXTS TINY
ACCEPT="$PY $ROOT/scripts/gpu/ray_accept.py --results $RES"
export ACCEPT

log() { echo "== +$((SECONDS - T0))s $*"; }
left() { echo $((BUDGET - RESERVE - (SECONDS - T0))); }
skip() {  # name why
  log "SKIPPED $1: $2"
  $ACCEPT set skipped "$(printf '%s: %s' "$1" "$2" | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" --append
}
# step NAME EXPECTED_S CAP_S COMMAND...: run COMMAND (a program or an exported function) when EXPECTED_S seconds
# are left, under a limit of min(CAP_S, the time left); its elapsed time and exit code go to the log and results
step() {
  local name=$1 est=$2 cap=$3; shift 3
  local l
  l=$(left)
  if ((l < est)); then
    skip "$name" "needs ~${est}s, ${l}s left of the ${BUDGET}s budget"
    return 99
  fi
  local lim=$((cap < l ? cap : l)) t=$SECONDS rc
  log "$name (expected ~${est}s, limit ${lim}s)"
  if declare -F "$1" >/dev/null; then
    timeout -k 10 "$lim" bash -c "$(printf '%q ' "$@")"
  else
    timeout -k 10 "$lim" "$@"
  fi
  rc=$?
  ((rc == 124 || rc == 137)) && log "$name: stopped at its limit of ${lim}s"
  log "$name: exit $rc after $((SECONDS - t))s"
  $ACCEPT set steps "{\"name\": \"$name\", \"seconds\": $((SECONDS - t)), \"rc\": $rc}" --append
  return $rc
}
finish() {
  local rc=$1
  $ACCEPT set elapsed_s "$((SECONDS - T0))"
  $ACCEPT summary --out "$OUT/summary.md"
  log "done (exit $rc); results in $OUT"
  [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$W"
  exit "$rc"
}

# ------------------------------------------------------------------------------------------------ 0. machine
if [ "$DRY" = 1 ]; then
  GPU="none (RAY_SH_DRY=1: reference backend, tiny sizes)"
else
  GPU=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  [ -n "$GPU" ] || GPU="no nvidia-smi answer"
fi
log "ray.sh: GPU $GPU; $(nproc) CPUs, $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p'); python $($PY -c 'import sys; print(sys.version.split()[0])'); budget ${BUDGET}s"
$ACCEPT set gpu "$($PY -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$GPU")"
$ACCEPT set mode "\"$([ "$DRY" = 1 ] && echo 'dry run (CPU, reference backend)' || echo 'GPU')\""

# ------------------------------------------------------------------------------------------------ 1. Ray, wheels, build
assemble() {  # the parts, from .ray-pack/ (this call's) or /tmp/ray-parts/ (where call 1 left its own)
  local sums=.ray-pack/ray-site.tar.xz.sha256 parts=() names
  [ -f "$sums" ] || { echo "ray.sh: $sums is missing (carry it: scripts/gpu/ray-prep.sh)"; return 3; }
  names=$(ls .ray-pack/ /tmp/ray-parts/ 2>/dev/null | grep -E '^ray-site\.tar\.xz\.part-[0-9]+$' | sort -u)
  for n in $names; do
    if [ -f ".ray-pack/$n" ]; then parts+=(".ray-pack/$n"); else parts+=("/tmp/ray-parts/$n"); fi
  done
  if ((${#parts[@]})); then
    echo "parts: ${parts[*]}"
    cat "${parts[@]}" > "$W/ray-site.tar.xz"
  elif [ -f .ray-pack/ray-site.tar.xz ]; then  # a pack small enough to travel whole (RAY_EXTRAS=serve)
    parts=(.ray-pack/ray-site.tar.xz)
    cp .ray-pack/ray-site.tar.xz "$W/ray-site.tar.xz"
  else
    echo "ray.sh: no part of the Ray pack on this machine (.ray-pack/ or /tmp/ray-parts/)"
    return 3
  fi
  local want got
  want=$(cut -d' ' -f1 "$sums")
  got=$(sha256sum "$W/ray-site.tar.xz" | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then
    echo "ray.sh: the Ray pack put together from ${parts[*]:-?} ($(stat -c %s "$W/ray-site.tar.xz") bytes) is not the one"
    echo "  packed (SHA-256 $want): a part is missing or from another pack. Part 00 travels in the call before"
    echo "  this one and is found only while the machine is still warm (~30 s after that call): make both calls again."
    return 3
  fi
  echo "Ray pack: $(stat -c %s "$W/ray-site.tar.xz") bytes, SHA-256 matches"
}
unpack() {
  if [ -f /tmp/ray-site/.sha256 ] && [ "$(cat /tmp/ray-site/.sha256)" = "$(cut -d' ' -f1 .ray-pack/ray-site.tar.xz.sha256)" ]; then
    echo "/tmp/ray-site is this pack already (a warm machine)"
  else
    rm -rf /tmp/ray-site && tar -xJf "$W/ray-site.tar.xz" -C /tmp && cut -d' ' -f1 .ray-pack/ray-site.tar.xz.sha256 > /tmp/ray-site/.sha256
  fi
  rm -f "$W/ray-site.tar.xz"
  du -sh /tmp/ray-site
}
ray_imports() {  # before the build: a pack that cannot load (a library left out) fails in seconds, not minutes
  PYTHONPATH=/tmp/ray-site python3 -c "import ray, ray.data, ray.serve, pyarrow, pyarrow.parquet; print('ray', ray.__version__, 'pyarrow', pyarrow.__version__)"
}
install_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .ray-gpu/whl/*.whl
}
build() {  # as tests/gpu/device_run.sh builds (../shared/GPU.md); the Ray folder joins the path after it
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-12} PYTHONPATH=/tmp/site \
    python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; return 2; }
  PYTHONPATH=/tmp/site python3 -c "import trtrun.runtime as r; ok, why = r.gpu_available(); print('gpu_available:', ok, why); raise SystemExit(0 if ok else 1)"
}
export -f assemble unpack ray_imports install_wheels build
if [ "$DRY" = 1 ]; then
  if ls .ray-pack/ray-site.tar.xz.sha256 >/dev/null 2>&1; then
    step assemble 5 60 assemble && rm -f "$W/ray-site.tar.xz"
  else
    log "dry run: no .ray-pack here; the pack is not checked"
  fi
  log "dry run: no unpacking, installing or building; Ray, pyarrow and trtrun from $PY (PYTHONPATH=$ROOT)"
else
  # without the pack there is no Ray, pyarrow, starlette or uvicorn here: nothing of the acceptance can run
  step assemble 10 90 assemble || finish 3
  step unpack 20 150 unpack || finish 3
  step imports 5 60 ray_imports || finish 3
  step install 5 60 install_wheels || finish 2
  step build 45 300 build || finish 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The Ray folder brings its own versions of packages the machine has (protobuf, aiohttp, requests, ...): the
# steps that need neither Ray nor pyarrow (the model's export and build, the PyTorch baseline) run without it
NORAY_PYTHONPATH=${PYTHONPATH:-}
export NORAY_PYTHONPATH
WITH_RAY() { [ "$DRY" = 1 ] || export PYTHONPATH=$NORAY_PYTHONPATH${NORAY_PYTHONPATH:+:}/tmp/ray-site; }
$PY -m trtrun info 2>&1 | head -8

# ------------------------------------------------------------------------------------------------ 2. data, model, plan
TOK=.ray-gpu/minilm; [ -f "$TOK/tokenizer.json" ] || TOK=${TRTRUN_DATA:-.data}/minilm
IMDB=.ray-gpu/imdb.tsv.xz; [ -f "$IMDB" ] || IMDB=${TRTRUN_DATA:-.data}/imdb.tsv
RT=.ray-gpu/rt_polarity.tsv.xz; [ -f "$RT" ] || RT=${TRTRUN_DATA:-.data}/rt_polarity.tsv
export TOK IMDB RT
prepare() {
  set -e
  mkdir -p "$W/data"
  if [[ $RT == *.xz ]]; then xz -dc "$RT" > "$W/data/rt_polarity.tsv"; else cp "$RT" "$W/data/rt_polarity.tsv"; fi
  $ACCEPT corpus --imdb "$IMDB" --out "$W/imdb.jsonl" ${N_TEXTS:+-n $N_TEXTS} --repeat "${REPEAT:-1}"
  $ACCEPT model --tokenizer "$TOK" --out "$W/model" $TINY
  $PY -m trtrun export "$W/model" -o "$W/model.onnx" -q
  $PY -m trtrun build "$W/model.onnx" --hybrid $PROFILE -o "$W/model.plan" -q
  ls -l "$W/model.plan"
}
export -f prepare
step prepare 30 240 prepare || finish 2
WITH_RAY
$PY -c "import ray, ray.data, ray.serve, pyarrow; print('ray', ray.__version__, 'pyarrow', pyarrow.__version__, 'from', ray.__file__)" \
  || { log "Ray does not import with PYTHONPATH=${PYTHONPATH:-}"; finish 3; }
$ACCEPT set settings "$($PY -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
  plan "hybrid, $PROFILE" backend "$BACKEND" max_seq_len "$MAX_SEQ" truncation truncate contexts 2 \
  max_batch_tokens "16384 (default)" shard_rows "$SHARD_ROWS" chunk_rows "1024 (default)" \
  ray "a local Ray started by each trtrun embed --ray: one $([ "$DRY" = 1 ] && echo "CPU actor (1 CPU)" || echo "GPU actor (num_gpus=1)")${RAY_EMBED_ARGS:+; $RAY_EMBED_ARGS}" \
  ray_b "${RAY_EMBED_ARGS_B:-none}" \
  pytorch "$PT_DTYPE on $PT_DEVICE, batches of $PT_BATCHES, sorted by length")"

# ------------------------------------------------------------------------------------------------ 3. trtrun embed, A B A B
EMBED_ARGS="$W/imdb.jsonl -m $W/model.plan --tokenizer $W/model --id-column id --max-seq-len $MAX_SEQ --truncation truncate --backend $BACKEND --shard-rows $SHARD_ROWS"
EST_EMBED=$([ "$DRY" = 1 ] && echo 20 || echo 40)
RUNS="inproc-1 ray-1 inproc-2 ray-2"
[ -n "${RAY_EMBED_ARGS_B:-}" ] && RUNS="inproc-1 ray-1 rayb-1 inproc-2 ray-2 rayb-2"
for run in $RUNS; do
  extra=""
  if [[ $run == ray-* ]]; then
    extra="${RAY_EMBED_ARGS:-} --ray${RAY_ADDRESS:+=$RAY_ADDRESS}"  # last: a bare --ray would take the next word
  elif [[ $run == rayb-* ]]; then
    extra="$RAY_EMBED_ARGS_B --ray${RAY_ADDRESS:+=$RAY_ADDRESS}"
  fi
  # shellcheck disable=SC2086
  step "embed $run" "$EST_EMBED" 180 $ACCEPT embed --name "$run" --out "$W/out-$run" --log "$OUT/embed.log" \
    --timeout 170 -- $EMBED_ARGS $extra
  done

# ------------------------------------------------------------------------------------------------ 4. vectors
# now, while it is cheap and before anything that may run out of time: in-process against Ray is the point
step "compare vectors" 10 90 $ACCEPT compare

# PYSPY=1: one in-process and one Ray run more, each under py-spy (sampling every process the command starts: for
# Ray, the raylet's workers and so the actor), collapsed stacks per thread in $OUT/pyspy-*.txt; not timed runs
pyspy_run() {  # NAME EXTRA...
  local name=$1; shift
  # shellcheck disable=SC2086
  py-spy record --subprocesses --threads --nonblocking --rate 100 --format raw -o "$OUT/pyspy-$name.txt" -- \
    $PY -m trtrun embed $EMBED_ARGS -o "$W/out-pyspy-$name" "$@" > "$OUT/pyspy-$name.log" 2>&1
  local rc=$?
  tail -3 "$OUT/pyspy-$name.log"; xz -T0 -f "$OUT/pyspy-$name.txt"
  return $rc
}
export -f pyspy_run
export EMBED_ARGS
if [ "${PYSPY:-0}" = 1 ]; then
  if command -v py-spy >/dev/null || [ -x /tmp/site/bin/py-spy ]; then
    export PATH=/tmp/site/bin:$PATH
    step "py-spy in-process" 25 90 pyspy_run inproc
    # shellcheck disable=SC2086
    step "py-spy ray" 35 120 pyspy_run ray ${RAY_EMBED_ARGS:-} --ray
  else
    skip "py-spy" "no py-spy on this machine (.ray-gpu/whl brings it: scripts/gpu/ray-prep.sh)"
  fi
fi

# ------------------------------------------------------------------------------------------------ 5. PyTorch baseline
batches=""; for b in $PT_BATCHES; do batches="$batches --batch $b"; done
# shellcheck disable=SC2086
if [[ " ${SKIP:-} " == *" pytorch "* ]]; then
  skip "pytorch baseline" "SKIP"
else
  step "pytorch baseline" 40 200 env PYTHONPATH="$NORAY_PYTHONPATH" $ACCEPT baseline --model "$W/model" --corpus "$W/imdb.jsonl" $batches \
    --max-seq-len "$MAX_SEQ" --device "$PT_DEVICE" --dtype "$PT_DTYPE" --vectors "$W/pytorch.npy" \
    && step "compare PyTorch's vectors" 10 90 $ACCEPT compare --baseline-vectors "$W/pytorch.npy"
fi

# ------------------------------------------------------------------------------------------------ 6. Ray Serve and trtrun serve
free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
serve_all() {  # LOAD_S: measured seconds per target; the targets in SERVE_TARGETS ("ray1 ray4 w1 w4")
  local pids=() names=() targets=() rc=0 n port
  stop_all() {
    for i in "${!pids[@]}"; do kill -TERM "${pids[$i]}" 2>/dev/null; done
    for i in "${!pids[@]}"; do
      local t=0
      while kill -0 "${pids[$i]}" 2>/dev/null && ((t < 300)); do sleep 0.1; t=$((t + 1)); done
      if kill -0 "${pids[$i]}" 2>/dev/null; then
        echo "server ${names[$i]} still up 30 s after SIGTERM: SIGKILL"; kill -KILL "${pids[$i]}" 2>/dev/null
      fi
      wait "${pids[$i]}" 2>/dev/null; echo "server ${names[$i]}: exit code $?"
    done
    pids=()
  }
  trap 'stop_all; exit 124' TERM
  common=(--tokenizer "$W/model" --backend "$BACKEND" --host 127.0.0.1 --contexts 2 --max-inputs 64 --log-level warning)
  for n in $SERVE_TARGETS; do
    port=$(free_port)
    if [[ "$n" == rayha* ]]; then
      # the same behind Ray Serve's HAProxy ingress (Ray 2.60's RAY_SERVE_ENABLE_HA_PROXY, experimental) through
      # trtrun's own flag: a local Ray of its own, HAProxy's files and ports the server's, its process ended on exit
      k=${n#rayha}; name=ray_serve_haproxy; ((k > 1)) && name=ray_serve_haproxy_x$k
      $PY -m trtrun serve "$W/model.plan" "${common[@]}" --port "$port" --ray-replicas-per-gpu "$k" --ray-haproxy --ray > "$W/server_$name.log" 2>&1 &
      names+=("$name")
    elif [[ "$n" == ray* ]]; then
      # trtrun's Ray Serve deployment: a local Ray each, rayK = K replicas sharing the GPU (num_gpus=1/K; one CPU
      # replica on the reference backend), Ray Serve's proxy on the port
      k=${n#ray}; name=ray_serve; ((k > 1)) && name=ray_serve_x$k
      $PY -m trtrun serve "$W/model.plan" "${common[@]}" --port "$port" --ray-replicas-per-gpu "$k" --ray > "$W/server_$name.log" 2>&1 &
      names+=("$name")
    else
      $PY -m trtrun serve "$W/model.plan" "${common[@]}" --port "$port" --workers "${n#w}" > "$W/server_serve_$n.log" 2>&1 &
      names+=("serve_$n")
    fi
    pids+=($!)
    targets+=(--target "${names[-1]}=http://127.0.0.1:$port")
    echo "started ${names[-1]} (pid ${pids[-1]}) on port $port"
  done
  local healthy=()
  for ((i = 0; i < ${#pids[@]}; i++)); do
    url=${targets[$((2 * i + 1))]#*=}
    # a server that does not come up is left out of the load (and fails the step), the others are measured
    $PY - "$url" "${pids[$i]}" <<'PY' && healthy+=(--target "${targets[$((2 * i + 1))]}") || { echo "${names[$i]} did not become healthy: left out"; rc=1; }
import os, sys, time, httpx
url, pid = sys.argv[1] + "/health", int(sys.argv[2])
end = time.time() + 150
while time.time() < end:
    try:
        os.kill(pid, 0)
    except OSError:
        print(f"the server (pid {pid}) exited"); sys.exit(1)
    try:
        r = httpx.get(url, timeout=2)
        if r.status_code == 200:
            d = r.json(); print("healthy:", url, {k: d.get(k) for k in ("backend", "backend_reason", "contexts", "pid")}); sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.25)
sys.exit(1)
PY
  done
  if ((${#healthy[@]})); then
    sleep 2
    TRTRUN_DATA=$W/data $PY bench/loadgen.py "${healthy[@]}" --clients "$CLIENTS" --duration "$LOAD_S" --warmup "$WARMUP" \
      --procs "$PROCS" --texts rt --n-texts "$N_LOAD_TEXTS" --out "$OUT/load.json" || rc=1
  fi
  stop_all
  # an HAProxy left running by a rayha server that had to be killed (the server ends it on SIGTERM): its folder is
  # in the server's status line
  for d in $(grep -ho 'its files in [^,]*' "$W"/server_*.log 2>/dev/null | cut -d' ' -f4); do
    if pkill -f "$d/" 2>/dev/null; then log "ended an HAProxy left running ($d)"; fi
  done
  for f in "$W"/server_*.log; do echo "---- $f"; tail -n 60 "$f"; done > "$OUT/servers.log"
  if ((rc != 0)); then
    tail -n 15 "$W"/server_*.log
    find "$RAY_TMPDIR" -path '*logs/serve/*' -name '*.log' 2>/dev/null | head -5 | while read -r f; do
      echo "---- $f"; tail -n 20 "$f"; done | tee -a "$OUT/servers.log"
  fi
  return $rc
}
export -f serve_all free_port
export CLIENTS PROCS WARMUP N_LOAD_TEXTS
SERVE_TARGETS=$(for k in $RAY_PER_GPU; do echo "ray$k"; [ "${RAY_HAPROXY:-0}" = 1 ] && echo "rayha$k"; done
                for n in $SERVE_WORKERS; do echo "w$n"; done)
SERVE_TARGETS=$(echo $SERVE_TARGETS)
# what a serving round costs besides the load: starting (Ray and its replica ~30 s), the reference embeddings,
# stopping; then WARMUP + LOAD_S per target. LOAD_S shrinks to what is left, and the 4-process server goes
# first when even that is short.
FIXED=$([ "$DRY" = 1 ] && echo 45 || echo 70)
l=$(left); nt=$(wc -w <<< "$SERVE_TARGETS")
LOAD_S=$(( (l - FIXED) / nt - WARMUP )); ((LOAD_S > LOAD_SECONDS)) && LOAD_S=$LOAD_SECONDS
if ((LOAD_S < 8)) && [[ " $SERVE_TARGETS " == *" w4 "* ]]; then
  skip "serve_w4" "too little time left for three targets (${l}s)"
  SERVE_TARGETS=$(echo "$SERVE_TARGETS" | sed 's/ *w4//'); nt=$((nt - 1))
  LOAD_S=$(( (l - FIXED) / nt - WARMUP )); ((LOAD_S > LOAD_SECONDS)) && LOAD_S=$LOAD_SECONDS
fi
export SERVE_TARGETS LOAD_S
if [[ " ${SKIP:-} " == *" serve "* ]]; then
  skip "serve" "SKIP"
elif ((LOAD_S < 3)); then
  skip "serve" "${l}s left: not enough for a measured load"
else
  est=$((FIXED + nt * (WARMUP + LOAD_S)))
  step "serve: $SERVE_TARGETS, ${LOAD_S}s each" "$est" "$l" serve_all
  [ -f "$OUT/load.json" ] && $ACCEPT serve --load "$OUT/load.json"
fi

# ------------------------------------------------------------------------------------------------ 7. summary
fails=$($PY -c "
import json, sys
r = json.load(open(sys.argv[1]))
bad = [s['name'] for s in r.get('steps', []) if s.get('rc')]
sv = r.get('serve') or {}
if sv and not sv.get('ok'): bad.append('serve answers')
print(' '.join(bad))" "$RES")
[ -n "$fails" ] && log "steps that failed: $fails"
nskip=$($PY -c "import json, sys; print(len(json.load(open(sys.argv[1])).get('skipped', [])))" "$RES")
((nskip)) && log "$nskip step(s) skipped (SKIPPED lines above; the summary lists them)"
finish "$([ -z "$fails" ] && echo 0 || echo 1)"
