# Shared by scripts/run, scripts/test and scripts/bench: the project's virtualenv and
# the system programs VX11 needs. Sourced, not run.

VENV=.venv

# ensure_system_packages PROGRAM...: install the Debian package of each missing program
# (as root with apt-get), or say how.
ensure_system_packages() {
  local missing=()
  for program in "$@"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("$program")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]}…" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: ${missing[*]} not installed; install the Debian package(s) of that name (apt-get install ${missing[*]})" >&2
    exit 1
  fi
}

# ensure_venv [EXTRAS]: a virtualenv in .venv with the project installed (editable).
ensure_venv() {
  local extras="${1:-}"
  local stamp="$VENV/.installed${extras:+-$extras}"
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}
