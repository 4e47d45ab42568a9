# What the bench scripts share (sourced, not run): the release build and waiting for a hub to serve.

# Builds the release binary; sets BIN and raises the open-file limit for many connections.
build_twinhub() {
  cargo build --release -p twinhub
  BIN=$PWD/target/release/twinhub
  ulimit -n "$(ulimit -Hn)" || true
}

# wait_for_hub ADDRESS DATA_DIR LOG: returns once the hub at ADDRESS wrote its certificate and takes
# connections on 443; prints LOG and fails after 30 s.
wait_for_hub() {
  local address=$1 data_dir=$2 log=$3
  for _ in $(seq 1 300); do
    [ -f "$data_dir/server.pem" ] && (exec 3<>"/dev/tcp/$address/443") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the hub at $address did not start; its log:" >&2
  cat "$log" >&2
  return 1
}
