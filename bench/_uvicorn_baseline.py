"""The baseline server of bench/serve.py: one process, uvicorn + FastAPI + ONNX Runtime.

Does the irreducible work of a ranking request and nothing else: parse and validate the
same pydantic request, score the candidates with the same ONNX model (one thread), sort,
answer JSON. No traffic split, logging, metrics or guardrails.

    python bench/_uvicorn_baseline.py MODEL.onnx PORT
"""

# No `from __future__ import annotations`: FastAPI must see the route annotation as a type.

import sys


def main() -> None:
    import json

    import numpy as np
    import onnxruntime as ort
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import Response

    from attune.serving.api import RankRequest

    model_path, port = sys.argv[1], int(sys.argv[2])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, sess_options=options)
    input_name = session.get_inputs()[0].name
    app = FastAPI()

    @app.post("/v1/rank")
    async def rank(request: RankRequest) -> Response:
        X = np.asarray([c.features for c in request.candidates], dtype=np.float32)
        scores = session.run(None, {input_name: X})[0].reshape(-1)
        order = np.argsort(-scores, kind="stable")
        options = [
            {"option_id": request.candidates[i].option_id, "score": float(scores[i]), "rank": r + 1}
            for r, i in enumerate(order)
        ]
        return Response(json.dumps({"options": options}), media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
