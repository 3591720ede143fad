# Shared helpers for sluice's scripts (sourced, not run).

# ensure_packages CMD:PACKAGE ...  installs the Debian PACKAGE of every CMD that is missing.
# As root it uses apt-get; otherwise it names the packages to install and fails.
ensure_packages() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]} -- install with: sudo apt-get install -y ${missing[*]}" >&2
        return 1
    fi
    echo "installing ${missing[*]} (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq "${missing[@]}" >&2
}

# port_answers PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_answers() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# release_dir REPO: where cargo puts release binaries (honours CARGO_TARGET_DIR).
release_dir() {
    local target=${CARGO_TARGET_DIR:-$1/target}
    case $target in /*) ;; *) target=$1/$target ;; esac
    echo "$target/release"
}

# build_release: builds both binaries (sluice, upstream-demo) in release mode.
build_release() {
    ensure_packages cmake:cmake || return 1
    cargo build --release --workspace --bins >&2
}

# grpc_venv REPO: the Python virtual environment tests/grpc.rs runs a real gRPC server and
# client in (grpcio, grpcio-health-checking from PyPI), made once in REPO/target/grpc-venv.
grpc_venv() {
    local venv=$1/target/grpc-venv
    "$venv/bin/python" -c "import grpc, grpc_health" 2>/dev/null && return 0
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        [ "$(id -u)" -eq 0 ] || { echo "missing: python3-venv -- install with: sudo apt-get install -y python3-venv" >&2; return 1; }
        echo "installing python3-venv (apt-get)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-health-checking >&2
}
