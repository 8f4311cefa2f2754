#!/usr/bin/env bash
# TPU pod slice: run the same fairjax command on every worker of a TPU VM.
#
#   launch/tpu_pod.sh TPU_NAME ZONE [--project=P] -- --config=configs/ilql.py \
#       --config.run_dir=gs://BUCKET/runs/ilql --config.mesh.fsdp=-1 --config.mesh.data=1
#
# JAX discovers the pod topology itself on TPU VMs: the command passes
# --config.distributed.auto=True, which calls jax.distributed.initialize() without arguments.
# Assumes the repository is checked out at ~/fairjax on every worker with its requirements
# installed (`pip install -e .[tpu]`); set FAIRJAX_REMOTE_DIR to change that path.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 TPU_NAME ZONE [gcloud flags] -- [fairjax.train flags]" >&2
  exit 2
fi
TPU=$1; ZONE=$2; shift 2
GCLOUD_FLAGS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do GCLOUD_FLAGS+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
REMOTE_DIR=${FAIRJAX_REMOTE_DIR:-~/fairjax}
# Our overrides go AFTER the caller's flags (ml_collections needs --config=FILE before any
# --config.* override); each only when the caller did not set that key.
EXTRA=()
case " $* " in *" --config.distributed.auto="*) ;; *) EXTRA+=(--config.distributed.auto=True) ;; esac
case " $* " in *" --config.model.dtype="*) ;; *) EXTRA+=(--config.model.dtype=bfloat16) ;; esac
ARGS=$(printf ' %q' "$@" "${EXTRA[@]}")
gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" ${GCLOUD_FLAGS[@]+"${GCLOUD_FLAGS[@]}"} \
  --worker=all --command="cd $REMOTE_DIR && python3 -m fairjax.train$ARGS"
