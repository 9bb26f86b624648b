"""The planted-cue benchmark (issue 33): do the global explanations find what a classifier
really uses? ``run_benchmark(PlantedConfig(...), out)``; CLI in :mod:`cfjax.jobs.planted.cli`;
protocol in docs/planted.md."""

from cfjax.jobs.planted.config import EXPLAINERS, PlantedConfig, cell_key
from cfjax.jobs.planted.job import run_benchmark, table

__all__ = ["EXPLAINERS", "PlantedConfig", "cell_key", "run_benchmark", "table"]
