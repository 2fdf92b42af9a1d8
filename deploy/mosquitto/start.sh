#!/bin/sh
# Write the password file from the environment, then run the broker (compose.yaml's entrypoint).
set -eu
: "${MQTT_ANCHOR_PASSWORD:?set MQTT_ANCHOR_PASSWORD}"
: "${MQTT_NEWSROOM_PASSWORD:?set MQTT_NEWSROOM_PASSWORD}"
: "${MQTT_MONITOR_PASSWORD:?set MQTT_MONITOR_PASSWORD}"
passwd=/mosquitto/data/passwd
umask 077
: > "$passwd"
mosquitto_passwd -b "$passwd" anchor "$MQTT_ANCHOR_PASSWORD"
mosquitto_passwd -b "$passwd" newsroom "$MQTT_NEWSROOM_PASSWORD"
mosquitto_passwd -b "$passwd" monitor "$MQTT_MONITOR_PASSWORD"
exec mosquitto -c /mosquitto/config/mosquitto.conf
