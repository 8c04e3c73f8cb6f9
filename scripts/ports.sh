#!/usr/bin/env bash
# ports.sh: free TCP ports on 127.0.0.1 for the project's scripts (sourced; defines functions only).
# Ports come from 20000-32767, below the usual ephemeral range, and are never 15432-15434: another
# bench bed on shared machines owns those.

PORTS_RESERVED=" 15432 15433 15434 "

# True if PORT belongs to that other bench bed.
port_reserved() { [[ "$PORTS_RESERVED" == *" $1 "* ]]; }

# True if something listens on TCP port PORT (ss where present, else a connect attempt).
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Htln "sport = :$1" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Prints a free port that is not reserved and not in the space-separated list TAKEN:
# pick_port [TAKEN]. Status 1 (and a line on stderr) if 500 tries found none.
pick_port() {
  local taken=" ${1:-} " p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
    port_reserved "$p" && continue
    [[ "$taken" == *" $p "* ]] && continue
    port_in_use "$p" && continue
    printf '%s' "$p"
    return 0
  done
  echo "no free TCP port found on 127.0.0.1" >&2
  return 1
}
