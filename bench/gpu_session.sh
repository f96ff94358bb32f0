#!/usr/bin/env bash
# The GPU measurements still owed (issue 27's figures with --loader mixed and its measured share,
# nvImageCodec against torchvision's nvJPEG call, one and two threads making the device's
# batches, the CUDA paths of the loaders, the shards, any CNN, DDP's per-step agreement) in one
# command that fits one
# device lease: a machine lent for 15 minutes, of which its start takes 1-2 and one command
# may run 10. Each step gets what is left of the command's time, so that one that overruns
# cannot starve the rest; the logs go to $OUT (what the device tool brings back) and to the
# terminal.
#
#   bash bench/gpu_session.sh wheels   # here, once: the wheels the GPU machine lacks, in .whl/
#   device `run`: command "bash bench/gpu_session.sh", carry [".whl"], timeout_s 600
#   bash bench/gpu_session.sh dry      # here, on the CPU: every step at toy sizes (~1 min)
#
# The GPU machine has torch, torchvision and the rest of zfnet's needs but not webdataset (and
# its braceexpand) nor nvImageCodec (and nvJPEG's wheel): `wheels` fetches them; the run
# installs them into /tmp/site.
set -u
cd "$(dirname "$0")/.."
mode=${1:-gpu}
py=${PYTHON:-python3}  # the GPU machine's python holds torch
[ "$mode" != gpu ] && [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python

if [ "$mode" = wheels ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
    pins=$(grep -iE '^(webdataset|braceexpand)==' constraints.txt)
    get=(-m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
         --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any)
    # shellcheck disable=SC2086  # the pins are words
    "$py" "${get[@]}" -d .whl $pins || exit 1
    # nvImageCodec (and the nvJPEG it loads), which decodes the gpu and mixed loaders' batches
    # where it loads: apart (.whl/nvimgcodec), so that the run goes on without it
    pins=$(grep -iE '^(nvidia-nvimgcodec-cu13|nvidia-nvjpeg)==' constraints.txt)
    # shellcheck disable=SC2086
    "$py" "${get[@]}" -d .whl/nvimgcodec $pins || exit 1
    # TorchCodec apart (.whl/codec): only the codec check loads it, the rest keeps torchvision's
    exec "$py" "${get[@]}" -d .whl/codec "$(grep -E '^torchcodec==' constraints.txt)"
fi
case $mode in gpu | dry) ;; *) echo "usage: $0 [gpu|dry|wheels]" >&2; exit 2 ;; esac

start=$SECONDS
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=src
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:src
fi
if [ "$mode" = gpu ] && compgen -G ".whl/nvimgcodec/*.whl" >/dev/null; then
    # (its own folder: pip --target would replace one `nvidia` package folder with another)
    "$py" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site-nv .whl/nvimgcodec/*.whl \
        && export PYTHONPATH=/tmp/site-nv:$PYTHONPATH \
        || echo "nvImageCodec's wheels did not install: torchvision's decoder then" >&2
fi
# found, not imported (importing webdataset imports torch: 1.3 s): it and its braceexpand
if ! "$py" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("webdataset", "braceexpand")))' 2>/dev/null; then
    echo "webdataset is missing: run 'bash bench/gpu_session.sh wheels' here and carry .whl" >&2
    exit 1
fi
budget=${BUDGET:-585}  # seconds for the whole command


step() {  # step NAME CAP COMMAND...: COMMAND with min(CAP, what is left) seconds; log in $OUT
    local name=$1 cap=$2 left
    shift 2
    left=$((budget - (SECONDS - start)))
    ((cap > left)) && cap=$left
    if ((cap < 20)); then
        echo "== $name: skipped, ${left}s left" | tee -a "$OUT/summary.txt"
        return
    fi
    echo "== $name (at most ${cap}s): $*" | tee -a "$OUT/summary.txt"
    timeout -k 5 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start))s in all" | tee -a "$OUT/summary.txt"
}
rc=0  # the last step's exit status

# the versions, then which library decodes the device's batches (auto: nvImageCodec where it
# can) and why not; in one interpreter (torch imported once: 3 s of the dry run's CPU)
{ nvidia-smi -L 2>/dev/null; "$py" -c 'import torch, torchvision; print("torch",
  torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available(),
  flush=True)
from zfnet.data import codec
d = torch.device("cuda" if torch.cuda.is_available() else "cpu"); nv = codec._nvimgcodec()
print("device decoder:", codec.device_decoder(d), "in", codec.device_threads(d),
      "thread(s) | nvImageCodec:", "not installed" if nv is None else nv.failure(d) or "decodes")
' 2>&1
} | tee "$OUT/summary.txt"

# the device's decoder is auto's (nvImageCodec where it loads) unless a run names it
e2e=(--e2e raw:cpu,squares:mixed,squares:gpu,squares:gpu:1,squares:mixed:torchvision)
e2e[1]+=,folder:mixed,shards:mixed,squares:cpu
if [ "$mode" = gpu ]; then
    cc=(--device cuda)
    # the loaders alone, the eager step, the anchor, and the gpu and cpu loaders end to end
    # were measured (docs/results.md): what is owed is --loader mixed end to end (its share
    # measured as a run does) against the compiled step of the same run; first the cpu loader
    # on the squares' raw pixels (zfnet shards --raw: nothing to decode, 3.2x the squares per
    # worker on a 2-core CPU), then from shards of
    # centre squares (zfnet shards --square), with nvImageCodec (in auto's 2 threads),
    # gpu with it alone in 2 threads and in 1, and mixed with torchvision's decoder (1 thread);
    # then the folder and the shards, and the cpu loader on the squares; each row is printed
    # as it is measured, so a run cut short keeps the ones before
    bench=(--parts 3,4 --step-variants compiled "${e2e[@]}" --images 60000 --unique 6000)
    # 11 settings (1 and 3 threads besides auto's): ~3 s each at ~10k img/s
    overlap=(--out "$OUT/overlap" --images 25600 --shares 0.5,measured --threads 1,3)
    share=(--images 8192 --pass-images 8192 --batch-size 256)  # 12 passes of ~1 s
else
    cc=(--device cpu --data "synthetic?n_train=256&n_val=128" --in-process)
    bench=(--dry-run --step-variants compiled "${e2e[@]}")
    overlap=(--dry-run)
    share=(--dry-run)
fi
# What the machine did meanwhile, to tell a shortfall's cause in the same lease: the GPU's
# utilisation each second, and the CPU's (cores busy decoding, or idle waiting) every 5 s.
if [ "$mode" = gpu ]; then
    nvidia-smi dmon -s u -d 1 >"$OUT/gpu_util.log" 2>&1 &
    vmstat -t 5 >"$OUT/vmstat.log" 2>&1 &
    trap 'kill $(jobs -p) 2>/dev/null' EXIT
fi
# First the libraries that can decode the device's batches, each one's rate and pixels
# (bench/codec_check.py: nvImageCodec, TorchCodec, torchvision; TorchCodec for this step
# only, the rest keeps nvImageCodec where it loads, else torchvision's); then the gpu and
# mixed loaders' correctness (their figures mean nothing if they are wrong), the benchmark
# the issue asks for, the loop with one setting changed at a time (bench/gpu_overlap.py), the
# mixed loader's measured share against a sweep, then the CUDA checks of the shards, of any
# CNN and of DDP's per-step agreement on CUDA tensors (two processes on the one GPU, gloo)
if [ "$mode" = gpu ] && compgen -G ".whl/codec/*.whl" >/dev/null; then
    "$py" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile \
        --no-cache-dir --target /tmp/site-codec .whl/codec/*.whl
fi
PYTHONPATH=/tmp/site-codec:$PYTHONPATH step codec_check 50 "$py" bench/codec_check.py \
    $([ "$mode" = gpu ] || echo --dry-run)
if ((rc != 0)); then  # a library that gives other pixels (or crashed): the known one for the rest
    export ZFNET_DEVICE_DECODER=torchvision
    echo "== codec_check failed: ZFNET_DEVICE_DECODER=torchvision from here" \
        | tee -a "$OUT/summary.txt"
fi
step cuda_check_loader 110 "$py" bench/cuda_check.py --out /tmp/cc-loader --only nvJPEG "${cc[@]}"
step bench_imagenet 300 "$py" bench/bench_imagenet.py "${bench[@]}"
step gpu_overlap 100 "$py" bench/gpu_overlap.py "${overlap[@]}"
step mixed_share 60 "$py" bench/bench_mixed_share.py "${share[@]}"
step cuda_check_more 140 "$py" bench/cuda_check.py --out /tmp/cc-more --only shards "any CNN" \
    "one GPU" "${cc[@]}"
echo "whole session: $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
