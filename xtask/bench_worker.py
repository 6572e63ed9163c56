"""`cargo xtask bench`'s Python engines: ONNX Runtime on the CPU, and docTR's PyTorch model eager or
under torch.compile. Answers one JSON request per line on stdin (load, run, peak), like Kiln's
worker, so the driver can alternate engines forward by forward.
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))


def versions():
    import importlib.metadata as md

    return {p: md.version(p) for p in ("onnxruntime", "torch", "python-doctr", "numpy")}


class Ort:
    def __init__(self, threads):
        self.threads = threads

    def load(self, req):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(req["onnx"], opts, providers=["CPUExecutionProvider"])
        self.feed = {self.sess.get_inputs()[0].name: noise(req["shape"])}

    def run(self):
        self.sess.run(None, self.feed)


class Torch:
    """docTR's model class with the fixture's seeded weights: the graph the ONNX file was traced from."""

    def __init__(self, threads, compile):
        import torch

        torch.set_num_threads(threads)
        self.compile = compile

    def load(self, req):
        import torch
        from make_fixtures import build_doctr

        model = build_doctr(req["model"])
        self.model = torch.compile(model) if self.compile else model
        self.x = torch.from_numpy(noise(req["shape"]))

    def run(self):
        import torch

        with torch.inference_mode():
            self.model(self.x)


def noise(shape):
    return np.random.default_rng(0).uniform(-1, 1, size=shape).astype(np.float32)


def handle(engine, req):
    cmd = req.get("cmd")
    if cmd == "load":
        engine.load(req)
        # The first forwards compile (torch.compile) or allocate; none of them is timed.
        for _ in range(max(1, req.get("warmup", 2))):
            engine.run()
        return {"device": "cpu", "versions": versions()}
    if cmd == "run":
        t = time.perf_counter()
        engine.run()
        return {"ms": (time.perf_counter() - t) * 1e3}
    if cmd == "peak":
        return {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    raise ValueError(f"unknown request {cmd!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", choices=["ort", "torch", "torch-compile"], required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    engine = Ort(args.threads) if args.engine == "ort" else Torch(args.threads, args.engine == "torch-compile")
    for line in sys.stdin:
        try:
            reply = {"ok": True, **handle(engine, json.loads(line))}
        except Exception as e:  # reported to the driver, which records the row as an error
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
