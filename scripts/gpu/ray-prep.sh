#!/usr/bin/env bash
# Prepares here (where the package registry is) what scripts/gpu/ray.sh needs on the GPU machine, and prints the
# carry plan: the bytes of each thing and of each device call, each checked against the 64 MiB a call carries.
#   bash scripts/gpu/ray-prep.sh            (then the two calls it prints; docs/ray.md, "Ray on the GPU machine")
# Writes two folders that .gitignore ignores, so that they travel only when a call names them in carry:
#   .ray-pack/   Ray + pyarrow for the GPU machine's Python, xz-compressed and split (scripts/pack_ray.sh; kept
#                when its parts and checksum are there already: FORCE_PACK=1 packs again)
#   .ray-gpu/    imdb.tsv.xz (IMDB's 25,000 reviews), rt_polarity.tsv.xz (the load test's sentences), minilm/
#                (all-MiniLM-L6-v2's tokenizer and configs, no weights: ray.sh makes random weights of its shape),
#                whl/ (onnx-graphsurgeon for `trtrun build`, orjson for the server's and load generator's JSON,
#                py-spy for ray.sh's PYSPY=1 profiles)
# Data from $TRTRUN_DATA, else .data (../shared/data/get-data.sh DEST).
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${TRTRUN_DATA:-.data}
LIMIT=$((64 * 1048576))
for f in imdb.tsv rt_polarity.tsv minilm/tokenizer.json minilm/config.json; do
  [ -e "$data/$f" ] || { echo "ray-prep: $data/$f is missing (../shared/data/get-data.sh $data)" >&2; exit 1; }
done
if [ "${FORCE_PACK:-0}" = 1 ] || ! ls .ray-pack/ray-site.tar.xz.sha256 >/dev/null 2>&1; then
  bash scripts/pack_ray.sh .ray-pack
fi
rm -rf .ray-gpu && mkdir -p .ray-gpu/minilm
xz -9e -T0 -c "$data/imdb.tsv" > .ray-gpu/imdb.tsv.xz
xz -9e -T0 -c "$data/rt_polarity.tsv" > .ray-gpu/rt_polarity.tsv.xz
# the tokenizer, the model's config (random weights of its shape are made there) and sentence-transformers'
# pooling and max_seq_length; not the weights, the model card or the training-data list
(cd "$data/minilm" && tar -cf - --exclude=model.safetensors --exclude=README.md --exclude=data_config.json \
  --exclude=.gitattributes .) | tar -xf - -C .ray-gpu/minilm
bash scripts/gpu/fetch-wheels.sh .ray-gpu/whl onnx-graphsurgeon==0.6.1 orjson==3.13.0 py-spy==0.4.3 >/dev/null

bytes() { du -sb --apparent-size "$@" | awk '{s += $1} END {print s + 0}'; }
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
# what travels in every call: tracked files and untracked ones that git does not ignore (the device tool's
# rule), and the checkout as git archive sends it (a tar: 512-byte headers, so a little more)
travel=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null || true) \
  | awk '{s += $1} END {print s + 0}')
archive=$(git archive HEAD | wc -c)
checkout=$(( travel > archive ? travel : archive ))
echo "checkout: $archive bytes as git archive HEAD, $travel bytes of tracked + untracked-not-ignored files"
parts=(.ray-pack/ray-site.tar.xz.part-*)
[ -e "${parts[0]}" ] || parts=(.ray-pack/ray-site.tar.xz)
for p in "${parts[@]}" .ray-pack/ray-site.tar.xz.sha256 .ray-gpu/imdb.tsv.xz .ray-gpu/rt_polarity.tsv.xz \
         .ray-gpu/minilm .ray-gpu/whl; do
  printf '  %-40s %11s bytes (%s)\n' "$p" "$(bytes "$p")" "$(mib "$(bytes "$p")")"
done
n=${#parts[@]}
ok=0
echo "calls (each: checkout + carry <= 64 MiB = $LIMIT bytes):"
for ((i = 0; i < n; i++)); do
  if ((i < n - 1)); then
    carry=("${parts[$i]}")
    cmd="mkdir -p /tmp/ray-parts && cp ${parts[$i]} /tmp/ray-parts/ && ls -l /tmp/ray-parts"
  else
    carry=("${parts[$i]}" .ray-pack/ray-site.tar.xz.sha256 .ray-gpu)
    cmd="bash scripts/gpu/ray.sh"
  fi
  total=$((checkout + $(bytes "${carry[@]}")))
  verdict=fits; ((total > LIMIT)) && { verdict="OVER: lower PART_MB"; ok=1; }
  printf '  call %d: %s bytes (%s, %s): carry [%s]\n          command: %s\n' "$((i + 1))" "$total" "$(mib "$total")" \
    "$verdict" "$(printf '"%s", ' "${carry[@]}" | sed 's/, $//')" "$cmd"
done
exit $ok
