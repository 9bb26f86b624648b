#!/usr/bin/env bash
# One GPU check (issue 27 item 5): the attack and Mirror-CFE benchmarks at 28, 128 and 224 px,
# the 90k-counterfactual MNIST-sized pass and the FLOP-utilisation figure, in under 5 minutes
# of GPU time. Writes experiments/results/bench_gpu_<device>.json (e.g. bench_gpu_h100.json),
# rewritten after every step, so a run cut short still leaves the steps it finished.
#
#   bash experiments/gpu_check.sh            # on a GPU machine (refuses to run without one)
#   bash experiments/gpu_check.sh --dry      # anywhere: tiny sizes, JSON to /tmp (never results/)
#
# Steps (each under its own timeout; a failed or timed-out step is recorded and the next runs):
#   mnist28   experiments/bench.py, 28x28x1 default models: latent attack (100 steps) at
#             batch 4096 and 16384 + the full MNIST-sized pass: 10,000 images x 9 targets x
#             100 steps = 90,000 counterfactuals, chunks of 8192. RANDOM weights and N(0, 1)
#             latents (no dataset on the GPU box; throughput does not depend on them).
#   mirror28  experiments/bench.py --mirror at batch 4096: reflection (exact, jaxopt) and the
#             whole Mirror-CFE step (21 decoded transitions).
#   resnet128 experiments/bench_highres.py --model resnet128 --in-process: ResNet-18 + latent-512
#   resnet224 VAE decoder (attack, 10 steps) and the default Mirror decoder (Mirror-CFE, exact
#             solver, 21 points), JAX and PyTorch eager on the same GPU, same weights.
# FLOP utilisation: every row carries flops_per_s and frac_of_matmul_peak (FLOPs counted from
# the jaxpr by cfjax.flops; the peak is a measured 8192^2 matmul in JAX's default precision,
# TF32 on NVIDIA; bf16 beside it); the summary block lists them per step.
#
# Environment: PY (default .venv/bin/python if present, else python3: the device image's python3
# holds JAX, Flax, Optax and PyTorch with CUDA). cfjax also needs jaxopt, which that image lacks:
# carry it as a wheel (.whl/, see /work/.library/device/README.md), e.g. here
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl jaxopt==0.8.5
# and run with carry [".whl"]; this script installs .whl/*.whl into /tmp/site when jaxopt is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
ALLOW_CPU=0
for arg in "$@"; do
  case "$arg" in
    --dry) MODE=dry ;;
    --allow-cpu) ALLOW_CPU=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --dry, --allow-cpu)" >&2; exit 2 ;;
  esac
done

if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU in one process
export TQDM_DISABLE=1

if ! "$PY" -c "import jaxopt" >/dev/null 2>&1; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "gpu_check.sh: cfjax needs jaxopt and $PY has none; carry its wheel in .whl/ (see the header)" >&2
    exit 3
  fi
fi

BACKEND=$("$PY" -c "import jax; print(jax.default_backend())")
if [[ "$BACKEND" == gpu ]]; then
  NAME=$("$PY" -c "import jax; print(jax.devices()[0].device_kind)")
  DEVICE=$(echo "$NAME" | grep -oiE 'GH200|B200|H200|H100|A100|L40S|L4|A10G|V100|T4' | head -1 | tr 'A-Z' 'a-z' || true)
  [[ -n "$DEVICE" ]] || DEVICE=$(echo "$NAME" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_')
else
  NAME=cpu
  DEVICE=cpu
fi
if [[ "$MODE" == full && "$BACKEND" != gpu && "$ALLOW_CPU" != 1 ]]; then
  echo "gpu_check.sh: JAX sees no GPU (backend: $BACKEND); use --dry to test the script on a CPU" >&2
  exit 4
fi
if [[ "$MODE" == dry ]]; then
  OUTJSON=${OUTJSON:-${TMPDIR:-/tmp}/bench_gpu_dry_${DEVICE}.json}  # never a results file
else
  OUTJSON=${OUTJSON:-experiments/results/bench_gpu_${DEVICE}.json}
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "gpu_check.sh: mode $MODE, backend $BACKEND ($NAME), writing $OUTJSON"

# record NAME RC MILLISECONDS: fold the step's JSON (if any) and its status into $OUTJSON, atomically
record() {
  "$PY" - "$OUTJSON" "$WORK" "$1" "$2" "$3" "$MODE" "$NAME" <<'EOF'
import json, os, sys, time
from cfjax.io import atomic_write_json
out, work, name, rc, secs, mode, dev = sys.argv[1:]
rc, secs = int(rc), float(secs) / 1000.0
res = json.load(open(out)) if os.path.exists(out) else {}
if not res.get("steps"):
    res = {"benchmark": "experiments/gpu_check.sh (issue 27 item 5)", "mode": mode, "device": dev, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "steps": {}, "summary": {}}
    if mode == "dry":
        res["note"] = "dry run: tiny sizes to test the script; NOT a GPU measurement"
log = open(os.path.join(work, name + ".log"), errors="replace").read()
step = {"status": "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed"), "rc": rc, "seconds": round(secs, 1)}
if rc:
    step["log_tail"] = log[-3000:]
p = os.path.join(work, name + ".json")
if os.path.exists(p):
    step["result"] = json.load(open(p))
res["steps"][name] = step
s = res["summary"]
r = step.get("result", {})
if name == "mnist28":
    s["mnist28_attack"] = [{k: a.get(k) for k in ("batch", "steps", "cf_per_s", "flops_per_cf", "flops_per_s", "frac_of_matmul_peak")} for a in r.get("attack", [])]
    if "full_test_set" in r:
        s["mnist_full_pass"] = r["full_test_set"]
    s["matmul_peak_f32_flops"] = r.get("matmul_peak_f32_flops")
    s["matmul_peak_bf16_flops"] = r.get("matmul_peak_bf16_flops")
elif name == "mirror28":
    s["mnist28_mirror"] = [{k: a.get(k) for k in ("batch", "cf_per_s", "k_grid")} for a in r.get("mirror", [])]
elif name.startswith("resnet"):
    keep = ("method", "side", "batch", "cf_steps_per_s", "cf_per_s", "decoded_per_s", "flops_per_s", "frac_of_matmul_peak", "jax_over_torch",
            "port_max_logit_diff", "error")
    s[name] = [{k: x[k] for k in keep if k in x} for x in r.get("rows", [])]
res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
res["seconds_total"] = round(sum(v["seconds"] for v in res["steps"].values()), 1)
atomic_write_json(out, res)
EOF
}

# step NAME TIMEOUT_S COMMAND...: run under a timeout, never abort the script
step() {
  local name=$1 limit=$2 rc=0 t0 t1
  shift 2
  echo "== $name (timeout ${limit}s): $*"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  tail -n 3 "$WORK/$name.log" || true
  record "$name" "$rc" "$(( (t1 - t0) / 1000000 ))" || echo "gpu_check.sh: could not record $name" >&2
  echo "== $name: rc $rc"
}

TINY='{"widths":[8,8,16,16],"groups":4,"vae_widths":[4,4,8,8,8],"latent_dim":16}'
if [[ "$MODE" == full ]]; then
  step mnist28 95 "$PY" experiments/bench.py --out "$WORK/mnist28.json" --batch-sizes 4096 16384 --steps 100 --repeats 2 --full-test-set
  step mirror28 45 "$PY" experiments/bench.py --out "$WORK/mirror28.json" --batch-sizes 4096 --steps 100 --repeats 2 --mirror
  step resnet128 70 "$PY" experiments/bench_highres.py --model resnet128 --out "$WORK/resnet128.json" --in-process --sides jax torch \
    --batch-sizes 256 --mirror-batch-sizes 64 --max-decode 1344 --steps 10 --repeats 3
  step resnet224 85 "$PY" experiments/bench_highres.py --model resnet224 --out "$WORK/resnet224.json" --in-process --sides jax torch \
    --batch-sizes 256 --mirror-batch-sizes 64 --max-decode 1344 --steps 10 --repeats 3
else
  step mnist28 600 "$PY" experiments/bench.py --out "$WORK/mnist28.json" --batch-sizes 8 --steps 2 --repeats 1 --full-test-set \
    --full-test-set-images 16 --full-test-set-steps 2 --full-test-set-chunk 64
  step mirror28 600 "$PY" experiments/bench.py --out "$WORK/mirror28.json" --batch-sizes 8 --steps 2 --repeats 1 --mirror
  for m in resnet128 resnet224; do
    step "$m" 1800 "$PY" experiments/bench_highres.py --model "$m" --out "$WORK/$m.json" --in-process --sides jax torch \
      --batch-sizes 2 --steps 1 --repeats 1 --max-decode 21 --cfg-json "$TINY"
  done
fi
echo "gpu_check.sh: wrote $OUTJSON"
"$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({k: v['status'] for k, v in r['steps'].items()}), r['seconds_total'], 's')" "$OUTJSON"
