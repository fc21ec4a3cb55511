"""The measure stage: what a model does and how fast, on this machine or on a phone.

:mod:`.latency` times models on ONNX Runtime's CPU side by side; :mod:`.profile` profiles one
model (a phone through AI Hub, or this CPU); :mod:`.compare` measures ViT against SkipAt and
writes the tables and chart; :mod:`.predict` runs a model on images; :mod:`.dataset` reads
labelled image folders and :mod:`.evaluate` scores top-1 / top-5 with confidence intervals. Every function here takes
models that exist; making them from a checkpoint is :mod:`skipat_deploy.pipeline`'s.
"""
