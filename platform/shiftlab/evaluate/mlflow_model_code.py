"""The code MLflow stores with a logged shiftlab model (MLflow's "models from code")."""

import mlflow

from shiftlab.evaluate.mlflow_model import SegmentationModel

mlflow.models.set_model(SegmentationModel())
