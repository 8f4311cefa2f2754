#!/usr/bin/env bash
# Start N local fairjax processes on CPU that form one multi-process JAX run (gloo collectives).
#
#   launch/local_multihost.sh N [train flags...]           # python -m fairjax.train <flags>
#   FAIRJAX_CMD="python my_script.py" launch/local_multihost.sh N [args...]
#
# Env: FAIRJAX_LOCAL_DEVICES (fake CPU devices per process, default 1), FAIRJAX_PORT (coordinator
# port, default 12355), FAIRJAX_LOG_DIR (per-process logs, default: stdout/stderr interleaved).
# Each process gets FAIRJAX_COORDINATOR / FAIRJAX_NUM_PROCESSES / FAIRJAX_PROCESS_ID, which
# fairjax.parallel.initialize_distributed reads. If any process fails, the others are stopped
# and the script exits with that process's status.
set -uo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 NUM_PROCESSES [flags for python -m fairjax.train]" >&2
  exit 2
fi
N=$1; shift
PORT=${FAIRJAX_PORT:-12355}
DEVICES=${FAIRJAX_LOCAL_DEVICES:-1}
CMD=${FAIRJAX_CMD:-"python -m fairjax.train"}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup INT TERM
for ((i = 0; i < N; i++)); do
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES}" \
      FAIRJAX_COORDINATOR="localhost:${PORT}" FAIRJAX_NUM_PROCESSES="$N" FAIRJAX_PROCESS_ID="$i" \
      $CMD "$@" &
  pids+=($!)
done
status=0
# wait for the first process to end; on failure stop the rest
remaining=$N
while [ "$remaining" -gt 0 ]; do
  wait -n; rc=$?
  remaining=$((remaining - 1))
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$rc
    echo "local_multihost: a process exited with status $rc; stopping the others" >&2
    # give the survivors FAIRJAX_GRACE_S seconds to notice the dead peer themselves (JAX
    # heartbeat / fairjax step watchdog), then stop them
    for ((t = 0; t < ${FAIRJAX_GRACE_S:-0}; t++)); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ "$alive" -eq 0 ] && break
      sleep 1
    done
    cleanup
  fi
done
exit $status
