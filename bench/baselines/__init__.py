"""Reference implementations we compare against, with nothing of ours in their hot loop.

- :mod:`baselines.torch_got`: transformers ``GotOcr2ForConditionalGeneration`` on CPU (fp32, bf16).
- :mod:`baselines.onnx_vision`: the same vision encoder + projector exported with
  ``torch.onnx.export`` and run by onnxruntime.
- :mod:`baselines.llamacpp_lm`: stock llama.cpp (``llama_cpp.Llama``) decoding our text GGUF.

Each module imports its heavy packages lazily, inside functions, so collecting the suites works
without them; the suites skip with the reason when a package is missing.
"""
