#!/bin/sh
# Run Janus with deploy/janus's files; the VideoRoom's admin key comes from JANUS_ADMIN_KEY (the anchor's
# fanout.janus_admin_key), written into a private copy of the config at each start.
set -eu
: "${JANUS_ADMIN_KEY:?set JANUS_ADMIN_KEY}"
here="$(cd "$(dirname "$0")" && pwd)"
run="${JANUS_RUN_DIR:-/run/janus}"
mkdir -p "$run"
chmod 700 "$run"
cp "$here/janus.jcfg" "$here/janus.transport.http.jcfg" "$run/"
umask 077
sed "s|@JANUS_ADMIN_KEY@|$JANUS_ADMIN_KEY|" "$here/janus.plugin.videoroom.jcfg" > "$run/janus.plugin.videoroom.jcfg"
exec janus --config "$run/janus.jcfg" --configs-folder "$run"
