"""The edges: WebRTC, MQTT control, recorder and RTMP output.

Never imports ``engines``; a stream is a sink or source of frames.
"""
