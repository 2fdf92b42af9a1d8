#!/bin/sh
# Write the password file from the environment, then run the broker (compose.yaml's entrypoint).
set -eu
: "${MQTT_ANCHOR_PASSWORD:?set MQTT_ANCHOR_PASSWORD}"
: "${MQTT_NEWSROOM_PASSWORD:?set MQTT_NEWSROOM_PASSWORD}"
: "${MQTT_MONITOR_PASSWORD:?set MQTT_MONITOR_PASSWORD}"
passwd="${MOSQUITTO_PASSWD_FILE:-/mosquitto/data/passwd}"
config="${MOSQUITTO_CONFIG:-/mosquitto/config/mosquitto.conf}"
umask 077
: > "$passwd"
mosquitto_passwd -b "$passwd" anchor "$MQTT_ANCHOR_PASSWORD"
mosquitto_passwd -b "$passwd" newsroom "$MQTT_NEWSROOM_PASSWORD"
mosquitto_passwd -b "$passwd" monitor "$MQTT_MONITOR_PASSWORD"
# The broker reads it as its own user once it has dropped root.
if id mosquitto >/dev/null 2>&1; then chown mosquitto "$passwd"; fi
exec mosquitto -c "$config"
