"""The naive peer: what a user writes instead of this project. One uvicorn process, FastAPI, the
bundle's weights through plain transformers (AutoModel + mean pooling + the linear head), one
text per forward, no batching, no budgets. torch pinned to the same thread count as a replica.

    python -m loadtests.naive_peer BUNDLE --port 8001 [--threads 1]

POST /v1/classify {"text": "..."} -> {"label": ..., "probabilities": {...}}; GET /ready.
"""

import argparse
import json
from pathlib import Path

from pydantic import BaseModel


class Req(BaseModel):
    text: str


def build_app(bundle_dir: str):
    import torch
    from fastapi import FastAPI
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = Path(bundle_dir)
    meta = json.loads((path / "dihs.json").read_text())
    labels, max_length = meta["labels"], int(meta["max_length"])
    state = load_file(path / "model.safetensors")
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(path), attn_implementation="sdpa")
    encoder.load_state_dict(
        {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    )
    head = torch.nn.Linear(state["classifier.weight"].shape[1], len(labels))
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    encoder.eval(), head.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    app = FastAPI()

    @app.post("/v1/classify")
    async def classify(req: Req):
        enc = tokenizer([req.text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            x = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(x.dtype)
            p = head((x * m).sum(1) / m.sum(1)).softmax(-1)[0]
        return {"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, map(float, p)))}

    @app.get("/ready")
    async def ready():
        return {"ready": True}

    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    import torch
    import uvicorn

    torch.set_num_threads(a.threads)
    uvicorn.run(build_app(a.bundle), host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
