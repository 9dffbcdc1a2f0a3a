"""genserve's serving library: model cards, ONNX runtime, samplers, the step scheduler.

Imports neither torch nor ray; the Ray layer in `deployments/` and the training code in
`training/` both build on it.
"""
