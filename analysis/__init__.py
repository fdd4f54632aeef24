"""Analysis built on lowbit_jax: QSNR, crest factors, the QSNR theory and its crossovers, Monte-Carlo checks."""

from analysis import montecarlo, synthetic, theory
from analysis.advise import Advice, advise
from analysis.crest import CrestFactor, crest_factor
from analysis.grad_bias import overflow_probe
from analysis.qsnr import qsnr_db

__all__ = [
    "Advice",
    "CrestFactor",
    "advise",
    "crest_factor",
    "montecarlo",
    "overflow_probe",
    "qsnr_db",
    "synthetic",
    "theory",
]
