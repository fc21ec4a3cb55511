"""The commands: the only place where stages are chained.

A stage is a function from artifacts to artifacts with one config (load, export, quantize,
compile, measure, bundle). A command that runs more than one stage has a module here whose
``run()`` is the chain, taking the stage configs it uses (a command that quantizes takes the
quantizer's own :class:`~skipat_deploy.quant.QuantizeConfig`, so ``--precision``,
``--num-calib`` and ``--calib`` mean the same everywhere) plus its own. Where a command's
default differs from a stage's, the command module says so, once, with its reason
(``profile.QUANTIZE``). A command of one stage calls that stage directly.

==========  =================================================================================
command     where it runs
==========  =================================================================================
export      :mod:`.export` (load -> export)
quantize    :mod:`.quantize` (load -> quantize [-> the HTP simulator's figure])
compile     :mod:`.compile` (a model -> compile; or load -> quantize | export -> compile)
profile     :mod:`.profile` (a model -> measure; or load -> export + CPU INT8 | quantize -> measure)
compare     :mod:`.compare` (load x 2 -> export + CPU INT8 | quantize -> measure -> report)
evaluate    :mod:`.evaluate` (load -> the models each target needs, made on demand -> measure)
bundle      :mod:`.bundle` (load -> quantize per Hexagon -> compile per device -> manifest)
inspect     :func:`skipat_deploy.measure.inspect.inspect`
predict     :func:`skipat_deploy.measure.predict.predict`
verify      :func:`skipat_deploy.bundle.verify`
==========  =================================================================================
"""
