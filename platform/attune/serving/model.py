"""Model replicas' scorer: one ONNX Runtime session per registry version.

A :class:`OnnxScorer` is built from a registry version's ``model.onnx`` and
``feature_spec.json`` (the only place serving learns the feature order) and refuses a
version whose model cannot be loaded or whose input width disagrees with its spec.
Sessions run on one intra-op and one inter-op thread: a replica is one process on one
CPU, and request-sized inputs (a few rows) are fastest single-threaded.

Where the artifacts come from is a :class:`ModelStore` (a Protocol that
:class:`attune.registry.Registry` satisfies), so tests may hand in any store.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
from pydantic import ValidationError

from attune.data.spec import FeatureSpec
from attune.errors import ConfigError, FeatureSpecMismatch

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
SPEC_FILE = "feature_spec.json"


class ModelStore(Protocol):
    """Resolves aliases and reads verified artifact files of registry versions."""

    def resolve(self, alias_or_version: str) -> str: ...

    def read(self, version: str, name: str) -> bytes: ...


class OnnxScorer:
    """Scores candidate rows with one registry version's ONNX model.

    ``score(X)`` takes ``float32[n, spec.n_features]`` in spec order and returns ``n``
    scores (float64). It raises whatever ONNX Runtime raises; non-finite outputs are
    returned as they are (the caller decides what a garbage score means).
    """

    def __init__(self, *, version: str, spec: FeatureSpec, model_bytes: bytes) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf types
            raise ConfigError(
                field=MODEL_FILE, value=version, problem=f"ONNX Runtime cannot load it: {exc}"
            ) from exc
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ConfigError(
                field=MODEL_FILE,
                value=version,
                problem=f"expected one input, found {[i.name for i in inputs]}",
            )
        width = inputs[0].shape[-1] if inputs[0].shape else None
        if isinstance(width, int) and width != spec.n_features:
            raise FeatureSpecMismatch(
                expected=spec.n_features,
                actual=width,
                problem=f"input width of {version}/{MODEL_FILE} vs its {SPEC_FILE}",
            )
        self.version = version
        self.spec = spec
        self._session = session
        self._input = inputs[0].name
        self._output = session.get_outputs()[0].name

    @classmethod
    def load(cls, store: ModelStore, version: str) -> OnnxScorer:
        """Load ``version`` (a version id, not an alias) from ``store``.

        Raises the store's NotFound / ArtifactCorrupted errors, FeatureSpecMismatch for a
        spec that does not parse or fit the model, ConfigError for an unloadable model.
        """
        spec_bytes = store.read(version, SPEC_FILE)
        try:
            spec = FeatureSpec.from_json(spec_bytes)
        except ValidationError as exc:
            raise FeatureSpecMismatch(
                expected="a valid FeatureSpec",
                actual=spec_bytes[:200].decode(errors="replace"),
                problem=f"{version}/{SPEC_FILE} does not parse: {exc.errors()[0]['msg']}",
            ) from exc
        scorer = cls(version=version, spec=spec, model_bytes=store.read(version, MODEL_FILE))
        log.info("loaded model %s (%d features)", version, spec.n_features)
        return scorer

    def score(self, X: np.ndarray) -> np.ndarray:
        out = self._session.run([self._output], {self._input: X})[0]
        return np.asarray(out, dtype=np.float64).reshape(-1)
