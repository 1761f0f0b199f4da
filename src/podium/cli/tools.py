"""Commands beyond the core train/predict/evaluate loop: data tools, reports, crops.

Each command parses its arguments and calls one library function; the
examples double as documentation (`podium <command> --help`).
"""
from __future__ import annotations

from podium.cli.common import add_command, add_group, positive_int, split_config_and_overrides


def cmd_eda(args) -> int:
    import podium

    result = podium.eda(args.data, *args.items, out=args.out, progress=not args.quiet)
    print(f"EDA report: {result.html}")
    if result.result.get("yaml"):
        print("paste into your config:\n" + result.result["yaml"])
    return 0


def cmd_show_batch(args) -> int:
    import podium

    path, overrides = split_config_and_overrides(args.items)
    preview = podium.show_batch(podium.config(path, *overrides), n=args.n, out=args.out, log=lambda *a: None)
    print(f"{len(preview.labels)} augmented training images with their labels: {preview.path}")
    return 0


def cmd_report(args) -> int:
    import podium

    path = podium.report(args.run, gradcam=args.gradcam, gallery=args.gallery)
    print(f"report: {path}\nsuspect labels (review, then feed to task.label_fixes): {path.parent / 'suspect_labels.csv'}")
    return 0


def cmd_crop(args) -> int:
    import podium

    report = podium.crop(podium.config(*_config_and_overrides(args.items)))
    print(f"cropped {report['n_images']} image(s) into {report['cache_dir']}: detected {report['detected']}, "
          f"reused {report['reused']}, fallback {report['fallback']}, from cache: {report['cached']}")
    return 0


def _config_and_overrides(items: list[str]) -> list:
    config, overrides = split_config_and_overrides(items)
    return [config, *overrides]


def cmd_synth_mask(args) -> int:
    import podium

    summary = podium.synth_mask(args.out, people=args.people, seed=args.seed, image_size=(args.width, args.height))
    print(f"wrote a synthetic mask-competition dataset to {args.out}: "
          f"{summary.get('train_images', '?')} train / {summary.get('eval_images', '?')} eval images")
    return 0


def cmd_submission_check(args) -> int:
    import podium

    podium.check_submission(args.file, args.info, classes=args.classes)
    print(f"{args.file}: valid ({args.info} order, labels 0..{args.classes - 1})")
    return 0


def register(sub) -> None:
    p = add_command(sub, "eda", "Explore a dataset: an offline HTML report of counts, sizes, duplicates, samples.",
                cmd_eda, "podium eda data/train\n  podium eda cfg.yaml --out eda_report")
    p.add_argument("data", help="a data folder, CSV, or config file")
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="dotted.key=value overrides")
    p.add_argument("--out", help="output folder (default: a new folder under runs/eda)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = add_command(sub, "show-batch", "A grid of augmented training images with their labels, as the model "
                                       "receives them (a PNG).", cmd_show_batch,
                    "podium show-batch cfg.yaml augment.preset=strong --n 25")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a YAML config, then dotted.key=value overrides")
    p.add_argument("--n", type=positive_int, default=16, help="images in the grid (default 16)")
    p.add_argument("--out", help="PNG to write (default: <output.dir>/<output.name>-batch.png, never overwritten)")

    p = add_command(sub, "report", "Write the HTML training report of a run (curves, confusions, worst errors).",
                cmd_report, "podium report runs/exp --gradcam")
    p.add_argument("run", help="run folder")
    p.add_argument("--gradcam", action="store_true", help="add Grad-CAM overlays of the worst errors")
    p.add_argument("--gallery", type=positive_int, default=16, help="confidently wrong images to show (default 16)")

    preprocess = add_group(sub, "preprocess", "Preprocessing that runs once and is cached (face/box crops).")
    p = add_command(preprocess, "crop", "Crop faces/boxes once (cached) with the config's crop.* settings.",
                cmd_crop, "podium preprocess crop cfg.yaml crop.detector=yunet crop.options.model_path=yunet.onnx")
    p.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE", help="a YAML config, then dotted.key=value overrides")

    data = add_group(sub, "data", "Dataset tools.")
    p = add_command(data, "synth-mask", "Write a small synthetic dataset in the mask-competition layout.",
                cmd_synth_mask, "podium data synth-mask data/mask --people 30")
    p.add_argument("out", help="output folder")
    p.add_argument("--people", type=positive_int, default=30, help="training people (7 photos each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=positive_int, default=384)
    p.add_argument("--height", type=positive_int, default=512)

    submission = add_group(sub, "submission", "Submission tools.")
    p = add_command(submission, "check", "Validate a mask-competition submission against info.csv.",
                cmd_submission_check, "podium submission check submission.csv --info eval/info.csv")
    p.add_argument("file", help="submission CSV")
    p.add_argument("--info", required=True, help="the competition's eval/info.csv")
    p.add_argument("--classes", type=positive_int, default=18, help="number of classes (default 18)")
