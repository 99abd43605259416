# Shared helpers for scripts/*: sourced, not run.

# apt-get install the given packages if any of their commands is missing.
# usage: ensure_apt "cmd:package" ...
ensure_apt() {
    local missing=()
    for pair in "$@"; do
        local cmd=${pair%%:*} pkg=${pair#*:}
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "error: cargo is not installed; install a Rust toolchain (https://rustup.rs) and retry" >&2
        exit 1
    }
}

# Start `contextfs serve` in the background; sets SERVER_PID and SERVER_URL.
# With SERVER_SESSION set it runs in a session of its own (see scripts/run).
# usage: start_server BINARY DATA_DIR [LISTEN]
start_server() {
    local bin=$1 data=$2 listen=${3:-127.0.0.1:0}
    local log="$data/serve.log"
    mkdir -p "$data"
    if [ -n "${SERVER_SESSION:-}" ]; then
        # Its own session: a terminal's Ctrl-C (SIGINT to the foreground
        # process group) does not reach it. A background job of a script is
        # no group leader, so setsid runs it in place: the pid stays valid.
        setsid "$bin" serve --data "$data" --listen "$listen" >"$log" 2>&1 </dev/null &
    else
        "$bin" serve --data "$data" --listen "$listen" >"$log" 2>&1 &
    fi
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        SERVER_URL=$(grep -o 'listening on http://[^ ]*' "$log" 2>/dev/null | sed 's/listening on //' || true)
        [ -n "$SERVER_URL" ] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; echo "error: the server exited" >&2; return 1; }
        sleep 0.1
    done
    echo "error: the server did not start within 10 s; log: $log" >&2
    return 1
}
