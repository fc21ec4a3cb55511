"""AIMET backend: the simulation and its bitwidth rules (:mod:`.sim`), the fixes after
calibration (:mod:`.fixes`), the choice of 16-bit layers (:mod:`.mixed`) and the pass that
drives them (:mod:`.driver`)."""

from .driver import AimetOutcome, run

__all__ = ["AimetOutcome", "run"]
