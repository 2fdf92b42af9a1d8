"""Neural engines: model definitions, weight loading, ONNX export and backends.

Never imports ``streams``; the runtime calls engines with arrays.
"""
