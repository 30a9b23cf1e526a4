"""MLflowLogger: one MLflow run per fit, written in bulk from device-side buffers, rank 0 only.

Parameters: the user's ``params`` (nested dicts flattened with ``/``) and the fit's settings
(:func:`~trainingloop.callbacks.tracking.fit_options`, as ``fit/<name>``). Metrics: every value
of the epoch's History record (``train/<m>``, ``validation/<m>``, ``examples_per_second``) at
step = epoch number (1-based), and ``batch/<m>``, the running value of the epoch as the CSV
writes it, every ``log_every_n_steps`` optimizer updates at step = global step after the update
(1-based). Batch values stay on the device until the epoch ends; then one
``MlflowClient.log_batch`` call sends the epoch (MLflow splits it into requests of its batch
limits). At fit end the ``ProgressPlot`` image and the ``best`` checkpoint of a
``Checkpoint(monitor=...)`` are logged as artifacts and the run is ended (``FINISHED``, or
``FAILED``/``KILLED`` when the fit fails or is interrupted). Needs the ``mlflow`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainingloop import _compat
from trainingloop.callbacks.base import Callback
from trainingloop.callbacks.checkpoint import Checkpoint
from trainingloop.callbacks.progress_plot import ProgressPlot
from trainingloop.callbacks.tracking import TrackerBuffer, fit_options
from trainingloop.distributed import is_main_process

if TYPE_CHECKING:
    from trainingloop.loop import TrainingLoop

__all__ = ["MLflowLogger"]


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


class MLflowLogger(Callback):
    """Logs each fit as an MLflow run of ``experiment`` (created if missing).

    >>> import trainingloop as tl
    >>> logger = tl.MLflowLogger(tracking_uri="sqlite:///run/mlflow.db", params={"width": 128})

    ``tracking_uri`` None uses MLflow's own default (``MLFLOW_TRACKING_URI``). A new experiment
    keeps its artifacts in ``artifact_location``; left None with a ``sqlite:///`` URI, that is
    ``mlartifacts/`` beside the database file (MLflow's own default is ``./mlruns`` in the
    working directory). :attr:`run_id` names the run of the latest fit.
    """

    def __init__(self, experiment: str = "trainingloop", run_name: str | None = None,
                 tracking_uri: str | None = None, log_every_n_steps: int = 50,
                 params: Mapping[str, Any] | None = None,
                 artifact_location: str | None = None) -> None:
        self.experiment, self.run_name, self.tracking_uri = experiment, run_name, tracking_uri
        self.params = dict(params or {})
        self.artifact_location = artifact_location
        self.run_id: str | None = None
        self._buffer = TrackerBuffer(log_every_n_steps)
        self._client: Any = None
        self._enabled = True

    # -- events ----------------------------------------------------------------------------
    def on_fit_start(self, loop: TrainingLoop) -> None:
        self._enabled = is_main_process()
        self.run_id = None
        if not self._enabled:
            return
        tracking = _compat.require("mlflow.tracking", "mlflow", "MLflowLogger")
        entities = _compat.require("mlflow.entities", "mlflow", "MLflowLogger")
        self._client = tracking.MlflowClient(tracking_uri=self.tracking_uri)
        run = self._client.create_run(self._experiment_id(), run_name=self.run_name)
        self.run_id = run.info.run_id
        params = {**_flatten(self.params),
                  **{f"fit/{k}": str(v) for k, v in fit_options(loop).items()}}
        self._client.log_batch(self.run_id, params=[entities.Param(k, v) for k, v in params.items()])
        self._buffer.start(loop)

    def on_batch_end(self, loop: TrainingLoop) -> None:
        if self._enabled:
            self._buffer.record(loop)

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if self.run_id is not None:
            self._write(loop)

    def on_fit_end(self, loop: TrainingLoop) -> None:
        if self.run_id is None:
            return
        error = self._buffer.error()
        status = "FINISHED"
        if error is not None:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) or loop.interrupted else "FAILED"
        try:
            self._write(loop)
            self._log_artifacts(loop)
        finally:
            self._client.set_terminated(self.run_id, status=status)

    # -- writing ---------------------------------------------------------------------------
    def _write(self, loop: TrainingLoop) -> None:
        """Send the buffered batch points and the new epoch record in one ``log_batch``."""
        entities = _compat.require("mlflow.entities", "mlflow", "MLflowLogger")
        metrics = [entities.Metric(f"batch/{name}", value, int(point.timestamp * 1000), point.step)
                   for point in self._buffer.batches() for name, value in point.values.items()]
        epoch = self._buffer.epoch(loop)
        if epoch is not None:
            number, values = epoch
            now = int(time.time() * 1000)
            metrics += [entities.Metric(key, value, now, number) for key, value in values.items()]
        if metrics:
            self._client.log_batch(self.run_id, metrics=metrics)

    def _log_artifacts(self, loop: TrainingLoop) -> None:
        for callback in loop.fit_callbacks:
            if isinstance(callback, ProgressPlot) and callback.path.exists():
                self._client.log_artifact(self.run_id, str(callback.path))
            best = callback.dir / "best" if isinstance(callback, Checkpoint) else None
            if best is not None and best.exists():
                self._client.log_artifacts(self.run_id, str(best.resolve()), "checkpoints/best")
                self._client.set_tag(self.run_id, "best_checkpoint", best.resolve().name)

    def _experiment_id(self) -> str:
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(self.experiment,
                                                      artifact_location=self._artifacts()))
        except Exception:  # created meanwhile by another process: use that one
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def _artifacts(self) -> str | None:
        if self.artifact_location is not None:
            return self.artifact_location
        uri = self.tracking_uri or ""
        if uri.startswith("sqlite:///"):
            database = Path(uri[len("sqlite:///"):])
            return (database.parent / "mlartifacts").resolve().as_uri()
        return None
