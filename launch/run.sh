#!/usr/bin/env bash
# Launch mathft_jax entry points on several processes: localhost, a Cloud TPU pod slice,
# or multi-node GPUs. Run `launch/run.sh --help` for the manual. Needs bash >= 5.1.
set -euo pipefail

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$LAUNCH_DIR")"
PYTHON="${PYTHON:-python3}"

usage() {
  cat <<'EOF'
launch/run.sh: run a mathft_jax entry point (train, infer, pipeline) on several processes.
Every process runs the same command; jax.distributed connects them (mathft_jax.core.distributed).

  launch/run.sh local [options] -- <command...>
      N processes on this machine (CPU collectives through gloo). Each gets
      MATHFT_COORDINATOR=127.0.0.1:<free port>, MATHFT_NUM_PROCESSES=N, MATHFT_PROCESS_ID=i.
      Output lines are prefixed "[p<i>] ". If any process exits non-zero, the others get
      SIGTERM, then SIGKILL after --grace seconds, and run.sh exits with that status.
      SIGTERM or SIGINT (Ctrl-C) to run.sh is forwarded to every process as SIGTERM (the
      trainer then saves one consistent checkpoint and exits); a second one sends SIGKILL.
      Children run in their own sessions (setsid): if run.sh itself is SIGKILLed they
      keep running; stop them by their pids (printed as "[run.sh] p<i>: pid N").
        --processes=N            number of processes (default 2)
        --devices_per_process=D  fake CPU devices per process: sets
                                 XLA_FLAGS=--xla_force_host_platform_device_count=D, so a
                                 2-process run with D=4 has the 8 global devices of a
                                 1-process run with 8 (same mesh, same curves)
        --port=P                 coordinator port (default: a free one)
        --log_dir=DIR            also write DIR/p<i>.log per process
        --grace=S                seconds between SIGTERM and SIGKILL when stopping (default 20)
      Example:
        launch/run.sh local --processes=2 --devices_per_process=4 -- \
          python -m mathft_jax.train --gin_file=gin_configs/models/tiny.gin \
          --gin_bindings=train.task=\'synthetic_arith_steps\' \
          --gin_bindings=train.model_dir=\'/tmp/run\'

  launch/run.sh tpu --tpu=NAME --zone=ZONE [--project=P] [options] -- <command...>
      Runs the command on every worker of a Cloud TPU VM slice through
      `gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command=...`.
      jax.distributed detects the workers itself. model_dir must be a gs:// path (all
      workers write one checkpoint). Each worker keeps its log in
      <log_dir>/<hostname>.log and its pid in <log_dir>/<hostname>.pid; the combined stream
      is also saved here in logs/tpu-NAME-<time>.log.
        --setup            first install the project on all workers (git clone or pull of
                           --repo at --branch into --workdir, then pip install -e . and jax[tpu])
        --repo=URL         git URL for --setup (default: this checkout's origin)
        --branch=B         branch for --setup (default: main)
        --workdir=DIR      checkout on the workers (default: ~/mathft_jax)
        --log_dir=DIR      log directory on the workers (default: ~/mathft_jax_logs)
        --stop             send SIGTERM to the running job on every worker (the trainer saves
                           one consistent checkpoint and exits; rerun the command to resume)
        --dry_run          print the exact gcloud commands instead of running them
      Example:
        launch/run.sh tpu --tpu=my-v4-8 --zone=us-central2-b --setup -- \
          python3 -m mathft_jax.train --gin_file=gin_configs/models/palm_1b.gin \
          --gin_bindings=train.model_dir=\'gs://my-bucket/runs/palm_1b\'

  launch/run.sh gpu --nodes=N --gpus_per_node=G --coordinator=HOST:PORT [options] -- <command...>
      One process per node drives that node's G GPUs. Prints the command to run on each
      node (node 0 hosts the coordinator at HOST:PORT), or runs this node's with --node_rank.
        --node_rank=I      run node I's command here (exec) instead of printing them all
        --dry_run          print the commands (the default without --node_rank)

  launch/run.sh --help     this text

Environment: PYTHON (interpreter used to pick a free port; default python3),
MATHFT_INIT_TIMEOUT (seconds jax.distributed waits for the coordinator; default 120).
EOF
}

die() { echo "run.sh: $*" >&2; exit 2; }
log() { echo "[run.sh] $*" >&2; }

# --- local ------------------------------------------------------------------------------

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# XLA_FLAGS with the host device count replaced by $1 (other flags kept).
xla_flags_with_devices() {
  local kept
  kept="$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
  echo "${kept:+$kept }--xla_force_host_platform_device_count=$1" | sed -E 's/ +/ /g; s/^ //'
}

# Copy stdin to stdout with a prefix per line (and to a log file if given), line by line
# (awk and sed may read a pipe in large blocks and hold lines back until it closes).
prefix_lines() {
  local line
  if [[ -n "$2" ]]; then exec 3>>"$2"; else exec 3>/dev/null; fi
  while IFS= read -r line || [[ -n "$line" ]]; do
    printf '%s%s\n' "$1" "$line"
    printf '%s\n' "$line" >&3
  done
}

declare -a CHILD_PIDS=() PREFIX_PIDS=()
STOPPING=0
KILL_AT=""  # $SECONDS after which stopping children get SIGKILL

signal_children() {  # $1: signal; each child leads its own process group (setsid)
  local pid
  for pid in "${CHILD_PIDS[@]}"; do
    kill "-$1" -- "-$pid" 2>/dev/null || true
  done
}

stop_children() {  # SIGTERM now; the wait loop sends SIGKILL after the grace period
  ((STOPPING)) && return
  STOPPING=1
  KILL_AT=$((SECONDS + GRACE))
  signal_children TERM
}

SIGNALS=0
on_signal() {
  # Count first, before any command: the `wait` in the poll loop lets a second signal's
  # trap run inside the first one's, which must already see it was not the first.
  SIGNALS=$((SIGNALS + 1))
  if ((SIGNALS > 1 || STOPPING)); then
    log "second $1: killing every process"
    signal_children KILL
  else
    log "$1: forwarding SIGTERM to every process"
    stop_children
  fi
}

run_local() {
  local n=2 devices="" port="" log_dir="" arg
  GRACE=20
  while (($#)); do
    arg="$1"; shift
    case "$arg" in
      --processes=*) n="${arg#*=}" ;;
      --devices_per_process=*) devices="${arg#*=}" ;;
      --port=*) port="${arg#*=}" ;;
      --log_dir=*) log_dir="${arg#*=}" ;;
      --grace=*) GRACE="${arg#*=}" ;;
      --) break ;;
      *) die "local: unknown option $arg (see --help)" ;;
    esac
  done
  (($#)) || die "local: no command after --"
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "local: --processes must be a positive integer, got '$n'"
  port="${port:-$(free_port)}"
  [[ -n "$log_dir" ]] && mkdir -p "$log_dir"
  if [[ -n "$devices" ]]; then
    XLA_FLAGS="$(xla_flags_with_devices "$devices")"
    export XLA_FLAGS
  fi

  local fifo_dir i fifo
  fifo_dir="$(mktemp -d)"
  trap 'on_signal TERM' TERM
  trap 'on_signal INT' INT
  log "starting $n processes, coordinator 127.0.0.1:$port"
  for ((i = 0; i < n; i++)); do
    fifo="$fifo_dir/p$i"
    mkfifo "$fifo"
    prefix_lines "[p$i] " "${log_dir:+$log_dir/p$i.log}" <"$fifo" &
    PREFIX_PIDS+=($!)
    # setsid: each child leads its own process group, so stopping it stops what it started.
    MATHFT_COORDINATOR="127.0.0.1:$port" MATHFT_NUM_PROCESSES="$n" MATHFT_PROCESS_ID="$i" \
      setsid "$@" >"$fifo" 2>&1 </dev/null &
    CHILD_PIDS+=($!)
    log "p$i: pid ${CHILD_PIDS[-1]}"
  done

  # Poll rather than `wait -n`: bash may reap a child and drop it from its job table
  # before `wait -n` looks, while `wait PID` always finds the status bash kept.
  local status=0 left=$n pid st
  declare -A live=()
  for i in "${!CHILD_PIDS[@]}"; do live[${CHILD_PIDS[$i]}]=$i; done
  while ((left > 0)); do
    # Not a foreground `sleep`: a signal that arrives while bash waits on a foreground
    # child can be dropped (a TERM then an INT within one sleep lost the INT 11 times in
    # 30), while the `wait` builtin returns at once and runs the trap.
    sleep 0.2 &
    wait "$!" 2>/dev/null || true
    if [[ -n "$KILL_AT" ]] && ((SECONDS >= KILL_AT)); then
      log "still running after ${GRACE}s: SIGKILL"
      signal_children KILL
      KILL_AT=""
    fi
    for pid in "${!live[@]}"; do
      kill -0 "$pid" 2>/dev/null && continue  # running (or not reaped yet)
      wait "$pid" 2>/dev/null && st=0 || st=$?  # (quiet: no "Killed" line)
      i="${live[$pid]}"
      unset "live[$pid]"
      left=$((left - 1))
      if ((st != 0)); then
        if ((status == 0)); then
          status=$st
          ((STOPPING)) || log "p$i (pid $pid) exited with status $st: stopping the others"
        fi
        stop_children
      fi
    done
  done
  wait "${PREFIX_PIDS[@]}" 2>/dev/null || true
  rm -rf "$fifo_dir"
  log "all $n processes exited (status $status)"
  exit "$status"
}

# --- tpu --------------------------------------------------------------------------------

# One shell-quoted string from words (for a remote --command).
quote_words() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(printf '%q' "$w")"; done
  printf '%s' "$out"
}

# Refuse a local model_dir: the workers do not share a disk.
check_model_dir() {
  local w v found=0
  for w in "$@"; do
    if [[ "$w" == *model_dir=* ]]; then
      found=1
      v="${w#*model_dir=}"
      v="${v#[\'\"]}"
      [[ "$v" == gs://* ]] || die "tpu: model_dir must be a gs:// path shared by all workers, got '$v'"
    fi
  done
  ((found)) || log "warning: no model_dir=gs://... in the command; checkpoints need a gs:// model_dir"
}

print_or_run() {  # $1: dry run flag; rest: the command
  local dry="$1"; shift
  if ((dry)); then
    quote_words "$@"; echo
  else
    "$@"
  fi
}

run_tpu() {
  local tpu="" zone="" project="" setup=0 dry=0 stop=0 branch=main
  local workdir='~/mathft_jax' remote_logs='~/mathft_jax_logs' repo="" arg
  while (($#)); do
    arg="$1"; shift
    case "$arg" in
      --tpu=*) tpu="${arg#*=}" ;;
      --zone=*) zone="${arg#*=}" ;;
      --project=*) project="${arg#*=}" ;;
      --setup) setup=1 ;;
      --stop) stop=1 ;;
      --dry_run) dry=1 ;;
      --repo=*) repo="${arg#*=}" ;;
      --branch=*) branch="${arg#*=}" ;;
      --workdir=*) workdir="${arg#*=}" ;;
      --log_dir=*) remote_logs="${arg#*=}" ;;
      --) break ;;
      *) die "tpu: unknown option $arg (see --help)" ;;
    esac
  done
  [[ -n "$tpu" && -n "$zone" ]] || die "tpu: --tpu=NAME and --zone=ZONE are required"
  local -a ssh=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone" --worker=all)
  [[ -n "$project" ]] && ssh+=("--project=$project")

  if ((stop)); then
    print_or_run "$dry" "${ssh[@]}" \
      "--command=kill -TERM \$(cat $remote_logs/\$(hostname).pid)"
    return
  fi
  if ((setup)); then
    if [[ -z "$repo" ]]; then
      repo="$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null)" ||
        die "tpu: --setup needs --repo=URL (this checkout has no origin remote)"
    fi
    local install
    install="set -e; if [ -d $workdir/.git ]; then git -C $workdir fetch -q origin && git -C $workdir checkout -q $(printf '%q' "$branch") && git -C $workdir pull -q --ff-only; else git clone -q --branch $(printf '%q' "$branch") $(printf '%q' "$repo") $workdir; fi; cd $workdir && python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ."
    print_or_run "$dry" "${ssh[@]}" "--command=$install"
  fi
  (($#)) || { ((setup)) && return; die "tpu: no command after --"; }
  check_model_dir "$@"
  # Remote: run in the checkout, log and pid per worker (named by hostname), exit status kept.
  local remote
  remote="mkdir -p $remote_logs && cd $workdir && { $(quote_words "$@") 2>&1 & echo \$! > $remote_logs/\$(hostname).pid; wait \$!; } | tee $remote_logs/\$(hostname).log; exit \${PIPESTATUS[0]}"
  if ((dry)); then
    print_or_run 1 "${ssh[@]}" "--command=$remote"
  else
    mkdir -p "$REPO_ROOT/logs"
    local local_log
    local_log="$REPO_ROOT/logs/tpu-$tpu-$(date +%Y%m%d-%H%M%S).log"
    log "all workers' output also in $local_log"
    "${ssh[@]}" "--command=$remote" 2>&1 | tee "$local_log"
    exit "${PIPESTATUS[0]}"
  fi
}

# --- gpu --------------------------------------------------------------------------------

run_gpu() {
  local nodes="" gpus="" coordinator="" rank="" arg
  while (($#)); do
    arg="$1"; shift
    case "$arg" in
      --nodes=*) nodes="${arg#*=}" ;;
      --gpus_per_node=*) gpus="${arg#*=}" ;;
      --coordinator=*) coordinator="${arg#*=}" ;;
      --node_rank=*) rank="${arg#*=}" ;;
      --dry_run) rank="" ;;
      --) break ;;
      *) die "gpu: unknown option $arg (see --help)" ;;
    esac
  done
  [[ "$nodes" =~ ^[1-9][0-9]*$ && "$gpus" =~ ^[1-9][0-9]*$ ]] ||
    die "gpu: --nodes=N and --gpus_per_node=G must be positive integers"
  [[ "$coordinator" =~ ^[^:]+:[0-9]+$ ]] || die "gpu: --coordinator=HOST:PORT is required"
  (($#)) || die "gpu: no command after --"
  local visible i
  visible="$(seq -s, 0 $((gpus - 1)))"
  if [[ -n "$rank" ]]; then
    [[ "$rank" =~ ^[0-9]+$ ]] && ((rank < nodes)) || die "gpu: --node_rank must be in [0, $nodes)"
    exec env MATHFT_COORDINATOR="$coordinator" MATHFT_NUM_PROCESSES="$nodes" \
      MATHFT_PROCESS_ID="$rank" CUDA_VISIBLE_DEVICES="$visible" "$@"
  fi
  for ((i = 0; i < nodes; i++)); do
    echo "# node $i"
    echo "env MATHFT_COORDINATOR=$coordinator MATHFT_NUM_PROCESSES=$nodes MATHFT_PROCESS_ID=$i CUDA_VISIBLE_DEVICES=$visible $(quote_words "$@")"
  done
}

# --- main -------------------------------------------------------------------------------

case "${1:-}" in
  local) shift; run_local "$@" ;;
  tpu) shift; run_tpu "$@" ;;
  gpu) shift; run_gpu "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) die "unknown mode '$1' (local, tpu or gpu; see --help)" ;;
esac
