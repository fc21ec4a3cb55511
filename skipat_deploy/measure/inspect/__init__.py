"""Where a quantized model loses accuracy, and where the NPU departs from the CPU: the float
model, the QDQ model on ONNX Runtime's CPU and the QDQ model on the HTP backend (the simulator
on x86-64), tensor by tensor, on the same held-out images.

Every quantized activation (a ``QuantizeLinear`` reading a computed tensor, with its
``DequantizeLinear``) is one row, in graph order: the value the next ops read (the
DequantizeLinear's output) is made a graph output of the QDQ model on the CPU and on the HTP,
and the tensor the quantizer reads is taken from the float reference. Pooled over the samples:

* ``qdq_vs_float_db``, ``npu_vs_float_db``, ``npu_vs_qdq_db``: SQNR of one against the other;
* ``op_vs_float_db``: the op's output in the QDQ model before its quantizer, against float;
* ``rounding_sqnr_db``: the SQNR one rounding to this tensor's grid gives, its signal power
  against uniform rounding noise ``scale² / 12``: the tensor's own quantization noise;
* ``qdq_drop_db``: how far ``qdq_vs_float_db`` falls from that of the quantized tensors the
  op reads (the noisiest of them; from its own ``rounding_sqnr_db`` for an op that reads none;
  from ``op_vs_float_db`` for an op that only moves elements, :data:`DATA_MOVEMENT`);
* ``npu_drop_db``: how much further the NPU falls behind the CPU QDQ model against float at
  this op (``qdq_vs_float_db - npu_vs_float_db``) than at the tensors the op reads: where the
  NPU's arithmetic costs accuracy. (``npu_vs_qdq_db`` itself drifts down along the graph as
  two roundings of every tensor compound, so its own drops say little.)

* ``qdq_added_noise``: the noise the activation quantizer itself adds, its output against
  the op's output before it in the QDQ model, as a fraction of that tensor's power: rounding
  alone gives about ``scale² / 12`` of it, a range that clips gives far more. Unlike a fall in
  dB it does not grow where an op amplifies the noise it reads (``q kᵀ`` of two noisy
  operands, a LayerNorm removing the mean that hid it): a quantizer clipping the residual
  stream is named itself, not the attention product three ops later, and an 8-bit weight on
  the 16-bit image (a 45 dB fall that adds little) does not outrank it.

Named: ``largest_qdq_drop`` (the largest ``qdq_added_noise``: the activation quantizer that
hurts most),
``first_npu_divergence`` (the first row where the NPU differs from the CPU QDQ model by more
than that tensor's own quantization noise: ``npu_vs_qdq_db < rounding_sqnr_db``) and
``largest_npu_drop`` (the op where the NPU loses most: the one whose NPU noise against float
beyond the CPU QDQ model's, as a fraction of the tensor's power, grows most from that at its
inputs; noises add, so a 16-bit tensor 30 dB behind at 56 dB does not outrank an 8-bit softmax
15 dB behind at 18 dB).

The float reference, per tensor, is the first of these that holds every quantized tensor by
name: the float model (``--float``, else the one the QDQ model's metadata names, checked by
sha256 as compile's NPU gate does), the float graph AIMET quantized (``<stem>.aimet/``: the
rewrites, rotation included, in float), or the QDQ graph itself with its activation quantizers
removed (float activations, weights as quantized). A model that was rotated or split before
quantizing computes other tensors than the float model, so name matching against the float
model would compare unlike things; the output figures are always against the float model.

Exposing every activation as an output on the HTP: the session is strict (no CPU fallback),
the number of partitions QNN made is recorded (the EPContext nodes of the context model it
writes; 1 for every ViT, SkipAt and DINOv2 graph tried), and the model's own output is checked
to be unchanged by the exposure on the first sample. (Exposing the QuantizeLinear outputs, the
integers, instead breaks strict placement.) The HTP dequantizes what it returns with its own
rounding of each scale (up to 0.3 of a step off at the top of a tiny softmax range), so the
NPU's values are put back on the quantizer's grid: the integers it computed, dequantized with
the model's scale. A value far off the grid is not one the NPU computes with (the image's Q/DQ
on the graph input comes back as a float copy): that row's NPU columns stay empty, with a
notice. When the exposed graph cannot be placed, only the model's outputs are compared on the
NPU, with a notice.

``onnxruntime.quantization.qdq_loss_debug`` is not used for the runs: its augmentation appends
a float Reshape per tensor (ops outside any QDQ unit, which the HTP would have to place), its
activation matching relies on the tensor names ONNX Runtime's quantizer writes (AIMET's export
names them otherwise), and ``collect_activations`` holds every sample's tensors at once; here
the sums are streamed, one sample at a time.
"""


from .config import InspectConfig
from .figures import InspectResult, TensorRow
from .graph import DATA_MOVEMENT, Quantizer, activation_quantizers, float_twin
from .run import inspect, measure

__all__ = ["DATA_MOVEMENT", "InspectConfig", "InspectResult", "Quantizer", "TensorRow",
           "activation_quantizers", "float_twin", "inspect", "measure"]
