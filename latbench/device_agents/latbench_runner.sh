#!/system/bin/sh
# latbench phone-side batch runner (POSIX sh: Android's mksh + toybox, Debian's dash).
#
# The host pushes models into ROOT/models/ and a plan into ROOT/batches/BATCH/plan, then runs
#
#   sh ROOT/agent/latbench_runner.sh run ROOT BATCH TOOL MASK THREADS WARMUP CPUS ZONES
#   sh ROOT/agent/latbench_runner.sh stop ROOT
#
# run   executes every plan line "STEP ROLE MODEL RUNS PROF" in order, one tool invocation each, pinned
#       with taskset to MASK, and prints ONE line per model (also appended to BATCH/results so that
#       a host whose link dropped can read what finished and resume with the rest):
#         @LB<TAB>step=S<TAB>role=R<TAB>rc=N<TAB>freq=cur/max,...<TAB>temp=mC,...<TAB>out=TEXT<TAB>@END
#       TEXT is the tool's whole output with newlines turned into \036 (RS), so the host parses it
#       with the same parsers as a terminal log. freq lists scaling_cur_freq/scaling_max_freq (kHz)
#       of the cpus in CPUS right after the run; temp the thermal zones in ZONES (millidegrees).
#       PROF (true/false) turns on benchmark_model's op profiling for that run.
# stop  ends a runner (and its tool) left from an earlier connection, e.g. after a host timeout.
#
# A refusal (bad argument or plan line, model not on the phone) is the line @LB<TAB>error=MESSAGE<TAB>@END
# and exit status 2; while another runner holds ROOT/runner.pid, @LB<TAB>busy=PID<TAB>@END and status 3.
#
# Nothing is written or deleted outside ROOT, which must be a directory named "latbench". Every
# argument is validated here as well as quoted by the host.
set -u

# The host reads only whole lines that end in @END, so an error must too; tabs and newlines in it would
# split the message or fake fields.
die() { printf '@LB\terror=%s\t@END\n' "$(printf '%s' "$*" | tr '\t\n' '  ')"; exit 2; }
is_uint() { case $1 in ''|*[!0-9]*) return 1 ;; esac; return 0; }
is_list() { case $1 in -) return 0 ;; ''|*[!0-9,]*) return 1 ;; esac; return 0; }
is_name() { case $1 in ''|.*|*[!A-Za-z0-9._-]*) return 1 ;; esac; return 0; }
check_root() {
    case $1 in /*/latbench) ;; *) die "root $1 must be an absolute path ending in /latbench" ;; esac
    case $1 in *..*|*[!A-Za-z0-9/._-]*) die "root $1 has forbidden characters" ;; esac
    [ -d "$1" ] || die "root $1 does not exist; run latbench android setup"
}
# Prints the pid in FILE if it is alive and really one of ours (its command line mentions ROOT/);
# a pid recycled by the system for another process is never touched.
ours() {
    [ -f "$1" ] || return 1
    read -r p < "$1" 2>/dev/null || return 1
    is_uint "$p" || return 1
    [ -r "/proc/$p/cmdline" ] || return 1
    case $(tr '\000' ' ' < "/proc/$p/cmdline" 2>/dev/null) in *"$2/"*) echo "$p"; return 0 ;; esac
    return 1
}

stop_all() {
    root=$1
    # The runner first (its trap takes its tool along), then any tool whose runner is already gone.
    for f in "$root"/runner.pid "$root"/batches/*/child.pid; do
        p=$(ours "$f" "$root") && kill "$p" 2>/dev/null && printf '@LB\tstopped=%s\t@END\n' "$p"
        rm -f "$f"
    done
    rmdir "$root/runner.break" 2>/dev/null   # left by a runner killed while breaking a stale lock
    printf '@LB\tstop\t@END\n'
}

# Removes a runner.pid whose runner is gone (killed with -9, so its EXIT trap never ran). One breaker at
# a time (mkdir is atomic), and only if the file still names the dead pid when read again: a lock that
# a live runner took meanwhile is never removed. An empty file is a lock being written: left alone.
break_stale() {
    mkdir "$root/runner.break" 2>/dev/null || return 1
    broke=1
    if read -r was < "$root/runner.pid" 2>/dev/null && ! ours "$root/runner.pid" "$root" > /dev/null &&
        read -r now < "$root/runner.pid" 2>/dev/null && [ "$now" = "$was" ]; then
        rm -f "$root/runner.pid" && broke=0
    fi
    rmdir "$root/runner.break"
    return $broke
}

read_sys() { v=-; [ -r "$1" ] && read -r v < "$1" 2>/dev/null; [ -n "$v" ] || v=-; printf '%s' "$v"; }

telemetry() {
    freq=; temp=
    if [ "$cpus" != - ]; then
        for c in $(printf '%s' "$cpus" | tr ',' ' '); do
            d=/sys/devices/system/cpu/cpu$c/cpufreq
            freq="$freq,$(read_sys "$d/scaling_cur_freq")/$(read_sys "$d/scaling_max_freq")"
        done
    fi
    if [ "$zones" != - ]; then
        for z in $(printf '%s' "$zones" | tr ',' ' '); do
            temp="$temp,$(read_sys "/sys/class/thermal/thermal_zone$z/temp")"
        done
    fi
    freq=${freq#,}; temp=${temp#,}
}

run_step() {  # STEP ROLE MODEL RUNS PROF
    step=$1 role=$2 model=$3 runs=$4 opprof=$5
    is_uint "$step" && is_uint "$runs" && is_name "$model" || die "bad plan line: $*"
    case $role in ref|item) ;; *) die "bad role $role" ;; esac
    case $opprof in true|false) ;; *) die "op profiling must be true or false, not $opprof" ;; esac
    [ -f "$root/models/$model" ] || die "model $model is not on the phone"
    log=$dir/step.log
    case $tool in
    tflite) set -- "$root/bin/benchmark_model" "--graph=$root/models/$model" "--num_threads=$threads" \
                "--warmup_runs=$warmup" --warmup_min_secs=0 "--num_runs=$runs" --min_secs=0 \
                "--enable_op_profiling=$opprof" ;;
    onnxruntime) set -- "$root/ort/onnxruntime_perf_test" -e cpu -m times -r "$runs" -x "$threads" -y 1 -I \
                "$root/models/$model" ;;
    esac
    if [ "$mask" != - ]; then set -- taskset "$mask" "$@"; fi
    "$@" > "$log" 2>&1 &
    child=$!
    echo "$child" > "$dir/child.pid"
    wait "$child"
    rc=$?
    child=
    rm -f "$dir/child.pid"
    telemetry
    {
        printf '@LB\tstep=%s\trole=%s\trc=%s\tfreq=%s\ttemp=%s\tout=' "$step" "$role" "$rc" "$freq" "$temp"
        tr '\n' '\036' < "$log"
        printf '\t@END\n'
    } > "$dir/line"
    cat "$dir/line" >> "$dir/results"
    cat "$dir/line"
}

mode=${1:-}
case $mode in
stop)
    [ $# -eq 2 ] || die "usage: stop ROOT"
    check_root "$2"
    stop_all "$2"
    exit 0 ;;
run)
    [ $# -eq 9 ] || die "usage: run ROOT BATCH TOOL MASK THREADS WARMUP CPUS ZONES"
    root=$2 batch=$3 tool=$4 mask=$5 threads=$6 warmup=$7 cpus=$8 zones=$9 ;;
*) die "usage: run ... | stop ROOT" ;;
esac

check_root "$root"
is_name "$batch" || die "bad batch name $batch"
case $tool in tflite|onnxruntime) ;; *) die "unknown tool $tool" ;; esac
case $mask in -) ;; ''|*[!0-9a-fA-F]*) die "bad cpu mask $mask" ;; esac
is_uint "$threads" && is_uint "$warmup" || die "threads and warmup must be integers"
is_list "$cpus" && is_list "$zones" || die "cpus and zones must be comma-separated integers or -"
dir=$root/batches/$batch
[ -f "$dir/plan" ] || die "no plan in $dir"
if [ "$tool" = onnxruntime ]; then
    LD_LIBRARY_PATH="$root/ort${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LD_LIBRARY_PATH
fi

# One runner at a time: a second one would share the cores and falsify both. noclobber creates the
# lock with O_EXCL, so of runners started together exactly one gets it (a check-then-write would let
# several in).
tries=0
until ( set -C; echo "$$" > "$root/runner.pid" ) 2>/dev/null; do
    if other=$(ours "$root/runner.pid" "$root"); then
        printf '@LB\tbusy=%s\t@END\n' "$other"
        exit 3
    fi
    tries=$((tries + 1))
    if [ "$tries" -gt 5 ]; then
        [ -e "$root/runner.pid" ] || die "cannot create the lock $root/runner.pid"
        die "the lock $root/runner.pid names no running runner; \`latbench android stop\` removes it"
    fi
    # Gone: its runner just ended, try again. Stale: break it. Being written: wait for the pid.
    [ ! -e "$root/runner.pid" ] || break_stale || sleep 1
done
child=
# Ended (host's `stop`, or the link's hang-up): take the running tool along, never leave it orphaned.
on_signal() { [ -n "$child" ] && kill "$child" 2>/dev/null; rm -f "$root/runner.pid" "$dir/child.pid"; exit 143; }
trap 'rm -f "$root/runner.pid"' EXIT
trap on_signal TERM HUP INT

printf '@LB\tstart\tpid=%s\t@END\n' "$$"
while read -r s r m n p rest; do
    [ -n "$s" ] || continue
    [ -z "$rest" ] || die "bad plan line: $s $r $m $n $p $rest"
    run_step "$s" "$r" "$m" "$n" "$p"
done < "$dir/plan"
printf '@LB\tdone\t@END\n'
