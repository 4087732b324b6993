"""Compatibility names: the loop is ``gradlab.training``, the builders ``gradlab.build``."""

from gradlab.build import model_from_config as build_model
from gradlab.build import split_from_config as load_split
from gradlab.training import NonFiniteError, RunHandle, train

__all__ = ["NonFiniteError", "RunHandle", "build_model", "load_split", "train"]
