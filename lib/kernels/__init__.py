"""The CPU fast paths: process-wide thread and allocator settings (`runtime`), GEMMs
(`blas`), NHWC convolutions (`fastconv`), V's encoder for control batches
(`fast_encoder`), the whole-sequence LSTM (`fast_lstm`), the map M's whole-sequence
warped convolutional LSTM (`map_lstm`) and its ego-motion warp as four taps a cell
(`sparse_warp`), M's mixture kernels (`mdn`) and a fused Adam (`fast_adam`). Each is a Chainer `FunctionNode`, optimizer or plain function checked
against Chainer's own op; on a GPU they step aside.

This package's `__init__` imports nothing: `lib/__init__.py` imports `runtime` from it
before NumPy loads.
"""
