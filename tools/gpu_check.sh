#!/usr/bin/env bash
# The GPU checks, as one short script: the Triton kernels' tests on the GPU, then the benchmarks whose figures the
# chapters record for a GPU (kernels, training throughput, the WuBu step). Each step has its own time limit and
# writes its own file under $OUT (default ./gpu-out), rows as they are measured, so a step that runs out of time
# keeps what it printed and the others still run. On an H200 (2026-12-04) these steps took about 4 minutes in all,
# run as separate commands; this script as a whole has not yet run on a GPU. The chapters say what was measured.
#
#   bash tools/gpu_check.sh                  # everything
#   OUT=/tmp/o bash tools/gpu_check.sh       # elsewhere
#
# On a machine that has PyTorch and Triton but not this package's other dependencies, put their wheels in .whl/
# first (fastcore, geoopt, pydantic + pydantic-core + annotated-types + typing-inspection, datasets + dill +
# multiprocess, for the Python there): they are installed into /tmp/site, and nothing else is changed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET                      # the kernels run on the GPU, not in the interpreter
t0=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME, a line in $OUT/summary.txt
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" > "$OUT/$name" 2>&1
  local rc=$?   # before the line below: its $(date) would reset $? (124: the time limit)
  echo "[$(( $(date +%s) - t0 )) s] $name: exit $rc" | tee -a "$OUT/summary.txt"
}
{ date -u; nvidia-smi -L; python3 -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"; } > "$OUT/summary.txt" 2>&1
xdist=(); python3 -c "import xdist" 2>/dev/null && xdist=(-n 8)   # compiling the kernels' variants dominates: spread it
step test_kernels.log 150 python3 -m pytest tests/test_kernels.py -q -p no:cacheprovider "${xdist[@]}"
step kernels.md 120 python3 benchmarks/kernels.py --no-compile
step throughput.md 120 python3 benchmarks/train_throughput.py --device cuda --threads 0 --style both --steps 150 --repeats 2 --eval-batches 5
step wubu_speed.md 90 python3 benchmarks/wubu_vs_gpt.py --speed --profile --device cuda --batch-size 64 --block-size 256
step kernels_compile.md 150 python3 benchmarks/kernels.py --ops mobius_add,expmap0,logmap0,dist --dtypes float32 --linear 4096x256x256 --cdist 0
# added 2026-12-04 (no GPU that session, not yet run on one): compiled training, as the main job now trains
step throughput_compiled.md 150 python3 benchmarks/train_throughput.py --device cuda --threads 0 --compile --mlp-act relu2 --steps 150 --repeats 2 --eval-batches 5
step wubu_speed_compiled.md 150 python3 benchmarks/wubu_vs_gpt.py --speed --compile --device cuda --batch-size 64 --block-size 256
cat "$OUT/summary.txt"
