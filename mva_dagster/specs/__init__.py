"""Framework, experiment and corpus specs: pydantic models, loaders, and the errors they raise."""

from mva_dagster.specs.corpus import Corpus, Document, load_corpus
from mva_dagster.specs.experiment import Experiment, load_experiment
from mva_dagster.specs.framework import AnalysisVariant, Framework, OutputContract, load_framework

__all__ = [
    "AnalysisVariant",
    "Corpus",
    "Document",
    "Experiment",
    "Framework",
    "OutputContract",
    "load_corpus",
    "load_experiment",
    "load_framework",
]
