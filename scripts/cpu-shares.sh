#!/usr/bin/env bash
# Where the machine's CPU time goes while a benchmark runs: every INTERVAL
# seconds (default 1), one line with the wall-clock time and the CPU time
# (user + system, milliseconds) each group of processes used since the
# previous line: PostgreSQL, the host (`rollway`), Mosquitto, the load
# generator (`rollway-bench`), everything else, and idle (from /proc/stat).
#
#   scripts/cpu-shares.sh [INTERVAL] > shares.tsv &
#   ./scripts/bench.sh --only dispatch
#   kill %1
#
# Sum the lines of a benchmark's steady window and divide by the number of
# statuses or commands it moved: CPU microseconds per item, per process.
# BENCHMARKS.md ("Targets not met") reports these.
set -euo pipefail
interval=${1:-1}
tick_ms=$((1000 / $(getconf CLK_TCK)))

# Cumulative CPU ticks per group, from /proc/<pid>/stat (fields 14 and 15,
# counted after the command name, which may hold spaces).
sample() {
    local pg=0 host=0 broker=0 bench=0 other=0 comm rest stat
    for stat in /proc/[0-9]*/stat; do
        read -r rest 2>/dev/null <"$stat" || continue
        comm=${rest#*(}
        comm=${comm%%)*}
        rest=${rest##*) }
        # shellcheck disable=SC2086
        set -- $rest
        local ticks=$((${12} + ${13}))
        case "$comm" in
        postgres | postmaster) pg=$((pg + ticks)) ;;
        rollway) host=$((host + ticks)) ;;
        mosquitto) broker=$((broker + ticks)) ;;
        rollway-bench) bench=$((bench + ticks)) ;;
        *) other=$((other + ticks)) ;;
        esac
    done
    local idle
    idle=$(awk '/^cpu /{print $5 + $6}' /proc/stat)
    echo "$pg $host $broker $bench $other $idle"
}

printf 'time\tpostgres_ms\thost_ms\tmosquitto_ms\tbench_ms\tother_ms\tidle_ms\n'
read -r p0 h0 m0 b0 o0 i0 < <(sample)
while sleep "$interval"; do
    read -r p1 h1 m1 b1 o1 i1 < <(sample)
    # Processes that exited between samples take their ticks with them;
    # a group's difference is floored at zero.
    printf '%s\t%d\t%d\t%d\t%d\t%d\t%d\n' "$(date +%T)" \
        $(((p1 > p0 ? p1 - p0 : 0) * tick_ms)) $(((h1 > h0 ? h1 - h0 : 0) * tick_ms)) \
        $(((m1 > m0 ? m1 - m0 : 0) * tick_ms)) $(((b1 > b0 ? b1 - b0 : 0) * tick_ms)) \
        $(((o1 > o0 ? o1 - o0 : 0) * tick_ms)) $(((i1 - i0) * tick_ms))
    p0=$p1 h0=$h1 m0=$m1 b0=$b1 o0=$o1 i0=$i1
done
