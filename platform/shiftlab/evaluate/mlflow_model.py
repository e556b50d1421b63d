"""A model folder as an MLflow model (``tracking.log_model: true``).

The selected model is logged as a ``pyfunc`` model from code (``mlflow_model_code.py``, no
pickled objects) whose only artifact is the model folder itself (weights, config, label space): MLflow's UI lists it with the run, and
``mlflow.pyfunc.load_model(uri).predict([image, ...])`` returns train-id maps exactly as
``shiftlab predict`` writes them (shiftlab must be installed where it is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.pyfunc import PythonModel

from shiftlab.evaluate.predictor import Predictor, load_model
from shiftlab.utils.version import __version__

ARTIFACT = "model_folder"


class SegmentationModel(PythonModel):
    """pyfunc wrapper: HxWx3 uint8 RGB images (an NxHxWx3 array, or a list of any sizes) in,
    a list of HxW train-id maps out."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor(load_model(context.artifacts[ARTIFACT]))

    def predict(
        # np.ndarray: a hint MLflow accepts without inferring a tabular schema for images
        self,
        context: Any,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> list[np.ndarray]:
        images = [np.asarray(image, dtype=np.uint8) for image in model_input]
        return self.predictor.predict(images)


def _requirements() -> list[str]:
    return [f"shiftlab=={__version__}", f"torch=={torch.__version__.split('+')[0]}"]


def log_model_folder(
    tracking_uri: str, run_id: str, model_dir: str | Path, name: str = "model"
) -> str:
    """Log ``model_dir`` as an MLflow model of run ``run_id``; returns its ``models:/`` URI."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)  # pyfunc.log_model writes through the fluent API
    try:
        logged = mlflow.initialize_logged_model(
            name=name, source_run_id=run_id, experiment_id=experiment_id
        )
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_model_code.py")),
            artifacts={ARTIFACT: str(model_dir)},
            pip_requirements=_requirements(),
            model_id=logged.model_id,
        )
        # Listed as the run's output: the run's "Models" column and page show it.
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    finally:
        mlflow.set_tracking_uri(previous)
    return str(info.model_uri)
