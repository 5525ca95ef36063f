"""Torch's intra-op threads for the training commands.

``BESTROUTE_NUM_THREADS`` when set (the same setting as the ONNX Runtime back-end's), else
torch's default (every core). Set it to 1 when something else keeps the machine busy: on
2 cores with the local pool's generation running, the reward and router stages ran 3.3x
and 1.8x faster with 1 thread than with torch's 2 (threads waiting on each other).
"""

from __future__ import annotations

import os


def configure_torch_threads() -> int:
    """Apply ``BESTROUTE_NUM_THREADS`` (if set) to torch; return the threads torch will use."""
    import torch

    if os.environ.get("BESTROUTE_NUM_THREADS"):
        from bestroute_lc.onnx_backend import inference_threads

        torch.set_num_threads(inference_threads())
    return torch.get_num_threads()
