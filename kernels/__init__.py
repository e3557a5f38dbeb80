"""ONNX graph building for the monitor's inference core (imported as `trajsafe_sdk.kernels`).

`graph.build_monitor_graph` (label-only head, KV in/out), `variants` (fp16, int8, ORT optimization, parity),
`reference` (numpy forward for tests) and `tiny.build_tiny_package` (random test packages).
"""
