#!/bin/bash
# The perf tools' command lines (docs/design.md "Perf tools"): --version on every tool names the
# version and the commit; the flags nccl-tests users know mean the same here (-n iterations,
# -w warmup, -c 0/1, -b/-e/-f with K/M/G sizes and min <= max enforced, -J JSON file); defaults
# show in --help; moefabric-run takes -n / -np and "--" before the command.
# Usage: check_tool_cli.sh TOOL...   (no fabric needed: nothing here measures)
set -u
fail() { echo "FAIL: $*"; exit 1; }
has() { grep -qF -- "$2" <<<"$1" || fail "$3: --help lacks '$2'"; }
for t in "$@"; do
  name=$(basename "$t")
  v=$("$t" --version) || fail "$name --version exited $?"
  [[ $v =~ ^moefabric\ [0-9]+\.[0-9]+\.[0-9]+\ \(.+\)$ ]] || fail "$name --version printed '$v'"
  help=$("$t" --help) || fail "$name --help exited $?"
  has "$help" "--version" "$name"
  case $name in
    moefabric-net-perf|moefabric-nccl-perf)
      for f in "-n,--iters" "-w,--warmup" "-c,--check [0/1]" "-b,--min-bytes" "-e,--max-bytes" "-f,--step-factor" \
               "-J,--json" "-T,--timeout" "=256M"; do has "$help" "$f" "$name"; done
      err=$("$t" -b 2K -e 1K 2>&1) && fail "$name accepted -b 2K -e 1K"
      grep -q "need min <= max" <<<"$err" || fail "$name -b 2K -e 1K: unclear error: $err"
      err=$("$t" -b 1X 2>&1) && fail "$name accepted -b 1X"
      err=$("$t" -i 10 2>&1) && fail "$name accepted -i (nccl-tests' step bytes, not iterations)"
      err=$("$t" -c 2x 2>&1) && fail "$name accepted -c 2x"
      ;;
    moefabric-moe-perf|moefabric-moe-gpu-perf)
      for f in "-r,--ranks" "-n,--iters" "-w,--warmup" "-d,--dtype" "-J,--json" "-T,--timeout" "--tokens"; do
        has "$help" "$f" "$name"
      done
      [ "$name" = moefabric-moe-perf ] && has "$help" "-c,--check [0/1]" "$name"
      err=$("$t" -i 10 2>&1) && fail "$name accepted -i"
      err=$("$t" -t 1 2>&1) && fail "$name accepted -t (nccl-tests' threads, not tokens)"
      ;;
    moefabric-run)
      has "$help" "-n,-r,--np,--ranks" "$name"
      has "$help" "=2" "$name"
      out=$("$t" -n 2 -- sh -c 'echo "rank $MOEFABRIC_RANK of $MOEFABRIC_NRANKS"' | sort) || fail "$name -n 2 -- cmd"
      [ "$out" = $'rank 0 of 2\nrank 1 of 2' ] || fail "$name -n 2 -- cmd printed '$out'"
      out=$("$t" -np 3 -T 60 sh -c 'echo "$MOEFABRIC_NRANKS"' | sort -u) || fail "$name -np 3 cmd"
      [ "$out" = 3 ] || fail "$name -np 3 cmd printed '$out'"
      out=$("$t" -n 1 sh -c 'printf "%s " "$@"' sh -n 5 -- x) || fail "$name passing the command's own -n"
      [ "$out" = "-n 5 -- x " ] || fail "$name changed the command's arguments: '$out'"
      "$t" -n 2 -- false 2>/dev/null && fail "$name -n 2 -- false succeeded"
      ;;
  esac
  echo "ok: $name ($v)"
done
