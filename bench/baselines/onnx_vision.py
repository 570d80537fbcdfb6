"""onnxruntime on an ONNX export of transformers' GOT vision encoder + projector.

The export (``torch.onnx.export``, TorchScript exporter: it needs no ``onnxscript``) covers
``get_image_features``: pixels [N, 3, S, S] → image embeddings [N, tokens, hidden], the same
work as our ``VisionEncoder.encode``. It is made once per checkpoint and cached next to it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

OPSET = 17


def export(model, image_size: int, out_path: Path) -> Path:
    """Export ``model``'s vision tower + projector (f32) to ``out_path``."""
    import torch

    class VisionFeatures(torch.nn.Module):
        def __init__(self, got):
            super().__init__()
            self.got = got

        def forward(self, pixel_values):
            out = self.got.model.get_image_features(pixel_values=pixel_values)
            return getattr(out, "pooler_output", out)

    module = VisionFeatures(model.float()).eval()
    dummy = torch.zeros(1, 3, image_size, image_size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about python ints in rel-pos sizes
        torch.onnx.export(
            module, (dummy,), str(out_path), dynamo=False, opset_version=OPSET,
            input_names=["pixel_values"], output_names=["image_features"],
            dynamic_axes={"pixel_values": {0: "views"}, "image_features": {0: "views"}},
        )
    return out_path


def session(onnx_path: Path, threads: int):
    """An onnxruntime CPU session: ``threads`` intra-op threads, one inter-op, all graph opts."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def encode(sess, pixels):
    """float32 [N, 3, S, S] numpy → [N, tokens, hidden] numpy."""
    return sess.run(None, {"pixel_values": pixels})[0]
