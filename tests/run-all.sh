#!/usr/bin/env bash
# Install what the test suite needs, then run it on every supported Python.
#
#   bash tests/run-all.sh                 # Python 3.10, 3.11, 3.12 and 3.13
#   PYTHONS="3.12" bash tests/run-all.sh  # some of them
#   bash tests/run-all.sh -k relay        # extra arguments go to pytest
#
# The interop and load tests (markers ``interop`` and ``load``: real peers, thousands of
# connections) run on one Python, ONCE_PYTHON (3.12 when it is among them, else the first);
# the others run the rest.
#
# With Python 3.10 among them it also runs the suite, less the interop tests, on 3.10 with
# setup.cfg's dependencies at their minimum (tests/constraints-minimum.txt, its own
# virtualenv .venv-3.10-minimum); MINIMUM_PYTHON= skips that, MINIMUM_PYTHON=3.11 moves it.
#
# Needs: Debian (apt-get, as root or with sudo) for dnsmasq and Kamailio, Node.js with
# npm for JsSIP and SIP.js, and the Pythons (pyenv's, or python3.X on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHONS=${PYTHONS:-"3.10 3.11 3.12 3.13"}

say() { printf '\n=== %s\n' "$*"; }

# --- Debian packages ------------------------------------------------------------
packages=(dnsmasq-base kamailio kamailio-websocket-modules kamailio-tls-modules openssl nginx-light haproxy
          chromium iproute2 util-linux redis-server sip-tester prometheus rtpengine-daemon
          baresip-core tshark sngrep)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package starts a system Kamailio; the tests start their own.
if command -v systemctl >/dev/null 2>&1; then
    systemctl stop kamailio >/dev/null 2>&1 || true
    systemctl stop nginx >/dev/null 2>&1 || true
    systemctl stop haproxy >/dev/null 2>&1 || true
    systemctl stop redis-server >/dev/null 2>&1 || true
    systemctl stop prometheus >/dev/null 2>&1 || true
    systemctl stop rtpengine-daemon >/dev/null 2>&1 || true
fi

# --- npm packages for the interop peers -----------------------------------------
if [ -f tests/interop/node/package.json ]; then
    say "installing JsSIP, SIP.js and hep-js (npm ci)"
    (cd tests/interop/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# --- one virtualenv per Python ------------------------------------------------------
find_python() {
    local version=$1 root candidate
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for candidate in "$root"/versions/"$version".*/bin/python"$version"; do
        [ -x "$candidate" ] && { echo "$candidate"; return 0; }
    done
    command -v "python$version" 2>/dev/null && return 0
    return 1
}

# pip, without the machine's notes about unused index locations
quiet_pip() {
    local python=$1
    shift
    "$python" -m pip install -q --disable-pip-version-check "$@" 2>&1 \
        | { grep -v -e 'is ignored: it is neither a file nor a directory' -e 'BuildBackendWarning' || true; }
    return "${PIPESTATUS[0]}"
}

# ruff and mypy (pinned in setup.cfg's lint extra), in the virtualenv of one Python
lint_checks() {
    local python=$1 status=0
    quiet_pip "$python" -e "$ROOT[test,lint]" || return 1
    "$python" -m ruff check aiosip_ws tests benchmarks || status=1
    "$python" -m mypy || status=1       # pyproject.toml: --strict on its files list
    return "$status"
}

# The sdist and wheel as `python -m build` makes them; the wheel installed (not editable) in
# a new virtualenv and run from outside the clone must print _version.py's version, and it
# must carry py.typed.
package_checks() {
    local python=$1 out expected wheel printed status=0
    out=$(mktemp -d)
    expected=$(sed -n "s/^__version__ = ['\"]\(.*\)['\"]\$/\1/p" "$ROOT/aiosip_ws/_version.py")
    if ! "$python" -m build --outdir "$out/dist" "$ROOT" >"$out/build.log" 2>&1; then
        tail -n 30 "$out/build.log" >&2
        rm -rf "$out"
        return 1
    fi
    wheel=$(echo "$out"/dist/*.whl)
    ls "$out"/dist
    "$python" -m zipfile -l "$wheel" | grep '^aiosip_ws/py\.typed ' >/dev/null \
        || { echo "$wheel has no aiosip_ws/py.typed" >&2; status=1; }
    if ! { "$python" -m venv "$out/venv" && quiet_pip "$out/venv/bin/python" "$wheel"; }; then
        rm -rf "$out"
        return 1
    fi
    printed=$(cd "$out" && "$out/venv/bin/aiosip-ws" --version) || status=1
    [ "$printed" = "aiosip-ws $expected" ] \
        || { echo "aiosip-ws --version printed '$printed', not 'aiosip-ws $expected'" >&2; status=1; }
    printed=$(cd "$out" && "$out/venv/bin/python" -c \
        "import aiosip_ws, aiosip_ws.core, aiosip; print(aiosip_ws.__version__)") || status=1
    [ "$printed" = "$expected" ] \
        || { echo "the installed aiosip_ws.__version__ is '$printed', not '$expected'" >&2; status=1; }
    printed=$(cd "$out" && "$out/venv/bin/python" -c 'import aiosip_ws; print(aiosip_ws.__file__)')
    case $printed in
        "$out"/venv/*) ;;
        *) echo "aiosip_ws was imported from $printed, not from the wheel" >&2; status=1 ;;
    esac
    rm -rf "$out"
    return "$status"
}

# The interop tests fail (rather than skip) when a peer cannot be installed or started.
export AIOSIP_WS_INTEROP_REQUIRED=${AIOSIP_WS_INTEROP_REQUIRED:-1}

# The Python that also runs the interop and load tests.
if [ -z "${ONCE_PYTHON:-}" ]; then
    ONCE_PYTHON=${PYTHONS%% *}
    [[ " $PYTHONS " == *" 3.12 "* ]] && ONCE_PYTHON=3.12
fi

failed=()
passed=()
for version in $PYTHONS; do
    python=$(find_python "$version") || { echo "Python $version not found" >&2; failed+=("$version(missing)"); continue; }
    venv="$ROOT/.venv-$version"
    say "Python $version: $python"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    quiet_pip "$venv/bin/python" --upgrade pip
    extras=test
    [ "$version" = "$ONCE_PYTHON" ] && extras=test,media     # aiortc: the media tests run once
    quiet_pip "$venv/bin/python" -e "$ROOT[$extras]"
    if ! "$venv/bin/python" -W error::DeprecationWarning -c 'import aiosip_ws'; then
        failed+=("$version(import)")
        continue
    fi
    selection=()
    [ "$version" = "$ONCE_PYTHON" ] || selection=(-m 'not interop and not load')
    status=0
    "$venv/bin/python" -m pytest -p no:cacheprovider "${selection[@]}" "$@" || status=$?
    # 5: the arguments chose only tests that run on ONCE_PYTHON
    if [ "$status" -eq 0 ] || { [ "$status" -eq 5 ] && [ ${#selection[@]} -gt 0 ]; }; then
        passed+=("$version")
    else
        failed+=("$version")
    fi
done

# --- the minimum versions of the dependencies, on the oldest Python -------------------
# setup.cfg's install_requires each at its floor (tests/constraints-minimum.txt), in a
# virtualenv of its own; the suite less the interop tests (the peers are the same).
MINIMUM_PYTHON=${MINIMUM_PYTHON-3.10}     # MINIMUM_PYTHON= skips it
if [ -n "$MINIMUM_PYTHON" ] && [[ " $PYTHONS " == *" $MINIMUM_PYTHON "* ]]; then
    started=$SECONDS
    venv="$ROOT/.venv-$MINIMUM_PYTHON-minimum"
    if ! python=$(find_python "$MINIMUM_PYTHON"); then
        failed+=("$MINIMUM_PYTHON-minimum(missing)")
    else
        say "Python $MINIMUM_PYTHON, the minimum versions of tests/constraints-minimum.txt: $python"
        if ! { { [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"; } \
               && quiet_pip "$venv/bin/python" --upgrade pip \
               && quiet_pip "$venv/bin/python" -c "$ROOT/tests/constraints-minimum.txt" -e "$ROOT[test]" \
               && "$venv/bin/python" -W error::DeprecationWarning -c 'import aiosip_ws'; }; then
            failed+=("$MINIMUM_PYTHON-minimum(install)")
        else
            "$venv/bin/python" -c 'from importlib.metadata import version as v
print(", ".join("%s %s" % (n, v(n)) for n in ("aiosip", "websockets", "multidict", "dnspython")))' || true
            status=0
            "$venv/bin/python" -m pytest -p no:cacheprovider -m 'not interop and not load' "$@" || status=$?
            # 5: the arguments chose interop tests only
            [ "$status" -eq 0 ] || [ "$status" -eq 5 ] || failed+=("$MINIMUM_PYTHON-minimum")
        fi
        echo "minimum versions: $((SECONDS - started)) s"
    fi
fi

# --- lint, types and the built package, once: on the first Python that passed ------
if [ ${#passed[@]} -gt 0 ]; then
    version=${passed[0]}
    say "ruff and mypy (Python $version)"
    lint_checks "$ROOT/.venv-$version/bin/python" || failed+=("$version(lint)")
    say "sdist and wheel, the wheel installed in a new virtualenv (Python $version)"
    package_checks "$ROOT/.venv-$version/bin/python" || failed+=("$version(package)")
fi

if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED on Python: ${failed[*]}"
    exit 1
fi
say "all passed on Python $PYTHONS"
