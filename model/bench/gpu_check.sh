#!/usr/bin/env bash
# The checks of the training side that need a GPU, in one bounded script (README, "Where it trains"):
#   bash model/bench/gpu_check.sh OUT [FASHION_MNIST_DIR]
# run from the repository root on a machine with CUDA and torch (no .venv needed: the machine's python3, or
# $PYTHON). It writes seven files into OUT:
#   gpu_check.log   every step's output, its exit status and seconds
#   qat.json        `build.py bench qat` on the GPU (its `device` column says cuda)
#   imq_run.json    run.json of bench conv's ResNet-20 IMQ schedule trained on the GPU
#   imq_history.json, imq_eval.json  its per-iteration history; `build.py eval` of its ticket on the CPU
#   lts_gpu.json    `bench lts`'s rows at 2 and 4 bits, seed 0 only, trained on the GPU (LTS's time ratios there)
#   pytest_cuda.txt tests/model/training/test_cuda.py (MPQACCEL_GPU_TESTS=1: the rest of the suite is the CPU's
#                   and hides the GPUs, tests/conftest.py)
# and, in the log, where a ResNet-20 DoReFa training step spends its time on the GPU (torch's profiler).
# Each step has its own time limit, so that one slow step leaves the others their turn; the script exits 1
# when any step failed (after running them all), 2 without CUDA.
set -u
out=${1:?usage: bash model/bench/gpu_check.sh OUT [FASHION_MNIST_DIR]}
data=${2:-}
py=${PYTHON:-python3}
if ! "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check.sh: $py sees no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
mkdir -p "$out"
log="$out/gpu_check.log"
# The runs' own folders: fresh for each call (a run directory of an earlier call, made by other code, would be
# refused rather than resumed), removed at the end.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S COMMAND...: run it, append its output and exit status to the log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name ($*)" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "== $name: exit $rc in $((SECONDS - start)) s" >>"$log"
    echo "$name: exit $rc in $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed="$failed $name"
}
failed=""

step machine 60 bash -c "nvidia-smi -L; nproc; $py -c 'import torch, numpy; print(torch.__version__, numpy.__version__, torch.cuda.get_device_name(0))'"
if [ -n "$data" ]; then  # the Debian package's path, where the tests and `--data fashion-mnist` look
    mkdir -p /usr/share/datasets/fashion-mnist && cp "$data"/*.gz /usr/share/datasets/fashion-mnist/
fi

step pytest_cuda 180 bash -c "MPQACCEL_GPU_TESTS=1 $py -m pytest -p no:cacheprovider -p no:benchmark -q -s tests/model/training/test_cuda.py >'$out/pytest_cuda.txt' 2>&1; rc=\$?; tail -n 25 '$out/pytest_cuda.txt'; exit \$rc"
step bench_qat 150 "$py" build.py bench qat --device cuda --quiet --out "$scratch/bench"
cp "$scratch/bench/qat.json" "$out/qat.json" 2>/dev/null
# bench conv's ResNet-20 IMQ run (model/bench/conv.py COMMON and IMQ_RUNS) through the command line.
step imq_resnet20 240 "$py" build.py train --method imq --arch resnet20 --data fashion-mnist --act-bits 4 \
    --val-size 1000 --val-seed 0 --test-subset 2000 --batch-size 128 --lr 3e-3 --seed 0 --no-float-baseline \
    --train-subset 6000 --epochs 2 --rho 0.8 --iterations 8 --target-bits 0 --device cuda --quiet \
    --run-dir "$scratch/imq"
cp "$scratch/imq/run.json" "$out/imq_run.json" 2>/dev/null
cp "$scratch/imq/imq_history.json" "$out/imq_history.json" 2>/dev/null
step imq_eval 120 "$py" build.py eval --checkpoint "$scratch/imq/ticket.pt" --out "$scratch/eval"
cp "$scratch/eval/eval.json" "$out/imq_eval.json" 2>/dev/null
# bench lts on the GPU, two widths and one seed of its rows (about 100 s on an H200).
step lts_gpu 200 "$py" -c "from model.training import distributed; distributed.use_device('cuda'); from model.bench.lts import run_lts_bench; [print(r) for r in run_lts_bench('$out/lts_gpu.json', bits_list=(2, 4), seeds=(0,), progress=False)]"
# Where a ResNet-20 DoReFa step's time goes on the GPU (bench qat's step, torch's profiler, top ops by GPU time).
step profile 120 "$py" - <<'PY'
import torch
from torch.profiler import ProfilerActivity, profile
from model.bench.qat import BATCH, _Stepper, quant_net
dev = torch.device("cuda", 0)
step = _Stepper(quant_net("resnet20", "dorefa"), dev, lts=False)
x, y = torch.rand(BATCH, 784, device=dev), torch.randint(0, 10, (BATCH,), device=dev)
for _ in range(3):
    step(x, y)
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(5):
        step(x, y)
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=40))
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
PY
if [ -n "$failed" ]; then
    echo "gpu_check.sh: failed:$failed (details in $log)" >&2
    exit 1
fi
