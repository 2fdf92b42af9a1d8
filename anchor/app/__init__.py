"""The application: the ``anchor`` command, the live anchor, MQTT commands on sessions, demos."""
