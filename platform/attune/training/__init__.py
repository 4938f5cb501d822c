"""Ray Tune sweeps of XGBoost rankers, evaluation and ONNX export."""
