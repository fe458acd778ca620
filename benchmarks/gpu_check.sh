#!/usr/bin/env bash
# The GPU check of issue 14, one prepared run on one H100/H200, at most 9.5 minutes (every part runs under
# `timeout`: the tests 120 s, each of the four step runs 110 s; not yet run on a GPU):
#   1. the tests marked `gpu` (xformers and nested-tensor numerics against SDPA, bf16 options);
#   2. `vjepa bench step` for ViT-L/16, 16x224, bf16, batch 24, the two default masks: ms/step, clips/s, MFU
#      against the chip's bf16 peak, the dense reference and `efficiency`; SDPA and xformers (where
#      importable), activation checkpointing off and on.
# Needs only python3 with torch (and pyyaml, numpy); PyAV, decord, DeepSpeed and xformers may be missing (the
# xformers rows then say so). Writes three files into $OUT (default benchmarks/results/gpu): summary.jsonl
# (one JSON line per run: the bench's own line, or why it did not run), device.txt and gpu_tests.txt; prints
# the summary. Nothing is downloaded: for the xformers rows on a machine without it, install a wheel built
# for that machine's torch first.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # the same runs with a tiny model, on any device
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.jsonl"
: >"$SUMMARY"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [[ -n "${GPU_CHECK_DRY:-}" ]]; then
  shape=(--model vit_test --frames 4 --crop 32 --batch 2 --steps 1 --warmup 0
    --pred-width 32 --pred-depth 1 --pred-heads 2)
  limit=120
else
  shape=(--model vit_large --frames 16 --crop 224 --batch 24 --steps 6 --warmup 3 --precision bf16)
  limit=110
fi

note() { # one JSON line into the summary: note NAME KEY VALUE...
  "$PY" - "$@" >>"$SUMMARY" <<'EOF'
import json, sys
name, rest = sys.argv[1], sys.argv[2:]
print(json.dumps({"run": name, **dict(zip(rest[::2], rest[1::2]))}))
EOF
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true; } >"$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >>"$OUT/device.txt" 2>&1
note device info "$(tr '\n' ' ' <"$OUT/device.txt")"

# 1. numerics: the gpu-marked tests (skipped, and said so, where there is no CUDA device)
timeout 120 "$PY" -m pytest -q -rs -m gpu tests/test_attention.py tests/test_varlen.py tests/test_step_options.py \
  >"$OUT/gpu_tests.txt" 2>&1
note gpu_tests rc "$?" last_line "$(tail -n 1 "$OUT/gpu_tests.txt")"

# 2. the step: SDPA and xformers, activation checkpointing off and on
have_xformers=0
"$PY" -c "import xformers.ops" 2>/dev/null && have_xformers=1
for attention in sdpa xformers; do
  for ckpt in off on; do
    name="step_${attention}_ckpt_${ckpt}"
    if [[ $attention == xformers && $have_xformers == 0 ]]; then
      note "$name" skipped "xformers is not importable here"
      continue
    fi
    flags=(--attention "$attention")
    [[ $ckpt == on ]] && flags+=(--ckpt)
    timeout "$limit" "$PY" -m vjepa bench step "${shape[@]}" "${flags[@]}" --json >"$TMP/out" 2>"$TMP/err"
    rc=$?
    if [[ $rc == 0 ]]; then
      tail -n 1 "$TMP/out" | "$PY" -c "import json,sys; print(json.dumps({'run': '$name', **json.load(sys.stdin)}))" \
        >>"$SUMMARY"
    else
      note "$name" rc "$rc" error "$(tail -n 1 "$TMP/err")"
    fi
  done
done
cat "$SUMMARY"
