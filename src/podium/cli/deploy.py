"""Deployment: export a run, cv run or ensemble to ONNX/TorchScript; serve any model over HTTP."""
from __future__ import annotations

import argparse
import os

from podium.cli.common import add_command, console, non_negative_int, notes, positive_float, positive_int, table

EXPORT_EXAMPLE = ("podium export runs/exp --format onnx --dynamic-batch\n"
                  "  podium export runs/cv5            (one graph averaging the folds)\n"
                  "  podium predict runs/exp/exports/onnx/model.onnx --data data/test")
SERVE_EXAMPLE = ("podium serve runs/exp/exports/onnx/model.onnx --port 8000\n"
                 "  curl -F files=@cat.jpg http://127.0.0.1:8000/predict")


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, found {value}")
    return value


def cmd_export(args) -> int:
    import podium

    out = console()
    result = podium.export(args.run, args.format, checkpoint=args.checkpoint, out=args.out,
                        dynamic_batch=args.dynamic_batch, tolerance=args.tolerance, opset=args.opset,
                        parity_images=args.parity_images, log=notes(out))
    p = result.parity
    table(f"exported {args.format}", {
        "model": result.path, "sidecar": result.sidecar, "parity report": result.parity_path,
        "validation images checked": p["n_images"], "max |p_export - p_torch|": f"{p['max_abs_diff']:.2e}",
        "top-1 agreement": p["top1_agreement"], "tolerance": f"{p['tolerance']:g}"}, out)
    return 0


def cmd_serve(args) -> int:
    import podium
    from podium.deploy.serve import API_KEY_ENV, ServeSettings

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    settings = ServeSettings(
        max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        batching="off" if args.no_batching else args.batching,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
        max_files=args.max_files, request_timeout_s=args.timeout, header_timeout_s=args.header_timeout,
        top_k=args.top_k, api_key=api_key)
    out = console()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        out.print(f"note: serving on {args.host} without an API key; anyone who reaches this address can use "
                  f"the model (set --api-key or ${API_KEY_ENV})")
    podium.serve(args.model, host=args.host, port=args.port, checkpoint=args.checkpoint, settings=settings,
                 threads=args.threads or None, trust=args.trust_model, log=out.print)
    return 0


def register(sub) -> None:
    p = add_command(sub, "export", "Export a run, cv run or ensemble to one ONNX or TorchScript model, checked against "
                                   "PyTorch.", cmd_export, EXPORT_EXAMPLE)
    p.add_argument("run", metavar="MODEL", help="run, cv run or ensemble folder, e.g. runs/exp")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="export format (default: onnx)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a .ckpt path (default: best)")
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (default: batch 1)")
    p.add_argument("--tolerance", type=positive_float, default=1e-4,
                   help="largest accepted difference of probabilities vs PyTorch (default: 1e-4)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default: 17)")
    p.add_argument("--parity-images", type=positive_int, default=64,
                   help="validation images the parity check runs on (default: 64)")
    p.add_argument("--out", help="model file to write (default: MODEL/exports/<format>/model.onnx|.pt)")

    p = add_command(sub, "serve", "Serve a run or an exported model over HTTP (FastAPI); requests micro-batched on a GPU, one by one on a CPU (--batching).",
                    cmd_serve, SERVE_EXAMPLE)
    p.add_argument("model", help="run, cv run or ensemble folder (PyTorch), model.onnx (onnxruntime), or model.pt "
                                 "(TorchScript, with --trust-model)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow a TorchScript .pt model: TorchScript is code that runs on load; only for files you made")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port, 1-65535 (default: 8000)")
    p.add_argument("--api-key", help="require this key in the X-API-Key header (default: $PODIUM_API_KEY if set)")
    p.add_argument("--checkpoint", default="best", help="for a folder: best or last (every run inside), or a .ckpt path")
    p.add_argument("--max-batch-size", type=positive_int, default=16, help="images per micro-batch (default: 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more images after its first (default: 5)")
    p.add_argument("--batching", choices=("auto", "on", "off"), default="auto",
                   help="micro-batch concurrent requests: auto = on for a GPU model, off on a CPU, where batching "
                        "measured lower throughput (default: auto)")
    p.add_argument("--no-batching", action="store_true", help="same as --batching off")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="bytes per file, in MiB (default: 10)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000,
                   help="pixels per image, checked before decoding (default: 40000000)")
    p.add_argument("--max-files", type=positive_int, default=16, help="files per request (default: 16)")
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds for a request's body to arrive, and again for its answer (default: 30)")
    p.add_argument("--header-timeout", type=positive_float, default=10.0,
                   help="seconds for a request's headers to arrive complete; slower connections are closed "
                        "(default: 10)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes returned per image (default: 5)")
    p.add_argument("--threads", type=non_negative_int, default=0,
                   help="onnxruntime intra-op threads (default: 0 = onnxruntime's choice)")
