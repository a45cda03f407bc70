# Shared by scripts/run, scripts/test and scripts/bench: the project's virtualenv and
# the system programs VX11 needs. Sourced, not run.

VENV=.venv

# ensure_system_packages PROGRAM[:PACKAGE]...: install the Debian package of each
# missing program (as root with apt-get), or say how and stop.
ensure_system_packages() { install_packages error "$@"; }

# want_system_packages PROGRAM[:PACKAGE]...: the same where it can install them, else a
# notice (VX11 works without them, at a weaker level).
want_system_packages() {
  install_packages "without it the sandbox runs at its basic level" "$@"
}

# want_test_packages PROGRAM[:PACKAGE]...: the same for programs only some tests use;
# those tests skip, saying why, when they are missing.
want_test_packages() { install_packages "the tests that need it are skipped" "$@"; }

# install_packages error|NOTICE PROGRAM[:PACKAGE]...: with "error", stop when a package
# cannot be installed; otherwise go on, printing NOTICE (what is lost without it).
install_packages() {
  local level=$1 missing
  shift
  missing=$(missing_packages "$@")
  missing=${missing% }
  [ -z "$missing" ] && return 0
  if can_apt && apt_install $missing; then
    return 0
  elif [ "$level" = error ]; then
    echo "error: install the Debian package(s) $missing (apt-get install $missing)" >&2
    exit 1
  else
    echo "notice: $missing not installed; $level" >&2
  fi
}

missing_packages() {
  local spec program
  for spec in "$@"; do
    program=${spec%%:*}
    command -v "$program" >/dev/null 2>&1 || printf '%s ' "${spec#*:}"
  done
}

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  echo "installing $*…" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# venv_python: the interpreter .venv is made from. `vx11 up` started as root runs VX11
# as its unprivileged service user (VX11_SERVICE_USER), who must be able to read the
# interpreter's standard library: the first python3 on PATH that can make a venv and
# whose installation every user can reach (one under /root cannot be), else the first.
venv_python() {
  local candidate
  for candidate in python3 /usr/bin/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c '
import ensurepip, os, sys, venv  # it can make a venv (Debian: python3-venv)
path = os.path.realpath(sys.base_prefix)
while path != "/":
    if not os.stat(path).st_mode & 0o001:
        sys.exit(1)
    path = os.path.dirname(path)
'; then
      echo "$candidate"
      return
    fi
  done
  echo python3
}

# ensure_venv [EXTRAS]: a virtualenv in .venv with the project installed (editable) and
# its dependencies at the versions pinned in requirements.lock (scripts/lock updates it);
# installed again when setup.cfg or the lock has changed since.
ensure_venv() {
  local extras="${1:-}"
  local stamp="$VENV/.installed${extras:+-$extras}"
  if [ ! -x "$VENV/bin/python" ]; then
    "$(venv_python)" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -c requirements.lock -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}
