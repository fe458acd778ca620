#!/usr/bin/env bash
# Starts `vjepa train` (or `vjepa extract`) under torchrun: one node with N processes, one node of a static
# multi-node job, or one agent of an elastic job with a c10d rendezvous. Only the command line is assembled
# here; every hyperparameter lives in the config.
#
#   launch/torchrun.sh --nproc 8 -- --config configs/pretrain/vjepa1_vitl16.yaml train.out_dir=runs/l16
#   # two nodes, static ranks (run on each node with its --node-rank):
#   launch/torchrun.sh --nnodes 2 --node-rank 0 --master node0:29500 --nproc 8 -- --config ...
#   # elastic: every node runs the same line; restarts resume from the newest checkpoint
#   launch/torchrun.sh --nnodes 2 --rdzv node0:29400 --rdzv-id run42 --max-restarts 3 --nproc 8 -- --config ...
#   VJEPA_COMMAND=extract launch/torchrun.sh --nproc 1 -- --checkpoint runs/l16 --data data/k400 --out feats
#
# Environment: VJEPA_PYTHON (default: python3), VJEPA_COMMAND (train | extract; default train).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

nproc=1 nnodes=1 node_rank=0 master="" rdzv="" rdzv_id="vjepa" max_restarts=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) nproc="$2"; shift 2 ;;
    --nnodes) nnodes="$2"; shift 2 ;;
    --node-rank) node_rank="$2"; shift 2 ;;
    --master) master="$2"; shift 2 ;;
    --rdzv) rdzv="$2"; shift 2 ;;
    --rdzv-id) rdzv_id="$2"; shift 2 ;;
    --max-restarts) max_restarts="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "launch/torchrun.sh: unknown option $1 (arguments for vjepa go after --)" >&2; usage 2 ;;
  esac
done

python="${VJEPA_PYTHON:-python3}"
command="${VJEPA_COMMAND:-train}"
case "$command" in train|extract) ;; *) echo "launch/torchrun.sh: VJEPA_COMMAND must be train or extract, got $command" >&2; exit 2 ;; esac

args=(--nproc-per-node "$nproc" --max-restarts "$max_restarts")
if [[ -n "$rdzv" ]]; then
  # elastic: membership through a c10d rendezvous; node ranks are assigned by torchrun
  args+=(--nnodes "$nnodes" --rdzv-backend c10d --rdzv-endpoint "$rdzv" --rdzv-id "$rdzv_id")
elif [[ "$nnodes" -gt 1 ]]; then
  [[ -n "$master" ]] || { echo "launch/torchrun.sh: --nnodes $nnodes needs --master HOST:PORT or --rdzv HOST:PORT" >&2; exit 2; }
  args+=(--nnodes "$nnodes" --node-rank "$node_rank" --master-addr "${master%:*}" --master-port "${master##*:}")
else
  args+=(--standalone)
fi
exec "$python" -m torch.distributed.run "${args[@]}" -m vjepa "$command" "$@"
