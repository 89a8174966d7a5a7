"""The ``hybrid-keras`` command.

    hybrid-keras models [--task T] [--markdown]   the registered models, as a table
    hybrid-keras models --write-readme README.md  regenerate the README's model table
    hybrid-keras card NAME                         one model card
    hybrid-keras export NAME OUT_DIR [--weights W] [--classes N] [--input-shape H,W,C]
    hybrid-keras segment MODEL IMAGE... --out DIR  class-colour overlay PNGs of a segmentation model
    hybrid-keras detect MODEL IMAGE... --out DIR   boxes (and masks) of a detection model drawn on the photos
    hybrid-keras explain MODEL IMAGE... --method deconvnet|occlusion|gradcam [--layer NAME] --out DIR
    hybrid-keras sample MODEL_WEIGHTS [--prime TEXT] [--length N] [--temperature T] [--seed S]
                                                   text from a saved character language model
    hybrid-keras demo [--out DIR] [--quick]        the end-to-end demo on shipped MNIST images
"""

from __future__ import annotations

import argparse
import os
import sys


def _parse_shape(text: str | None):
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--input-shape must be H,W,C integers, got {text!r}") from None
    if len(shape) != 3:
        raise SystemExit(f"--input-shape must be H,W,C, got {text!r}")
    return shape


def weights_summary(card) -> str:
    """The card's weight tags for a person: listed when few, summarised per publisher when many."""
    if not card.weights:
        return "none published"
    groups: dict[str, list] = {}
    for spec in card.weights:
        groups.setdefault(spec.source, []).append(spec)
    parts = []
    for source, specs in groups.items():
        if len(specs) <= 3:
            parts.append(", ".join(spec.tag for spec in specs))
            continue
        varying = []
        for key, label in (("alpha", "alpha"), ("input_shape", "input")):
            values = sorted({spec.builder_kwargs[key] for spec in specs if key in spec.builder_kwargs})
            if len(values) > 1:
                shown = [v[0] if key == "input_shape" else v for v in values]
                varying.append(f"{label} {shown[0]}-{shown[-1]}")
        if len({spec.includes_top for spec in specs}) > 1:
            varying.append("with or without top")
        prefix = os.path.commonprefix([spec.tag for spec in specs]).rstrip("_")
        parts.append(f"{prefix}_* ({len(specs)} {source} files: {', '.join(varying)})")
    return "; ".join(parts)


def models_table(task: str | None = None, markdown: bool = False) -> str:
    """The registry as a table (plain text, or Markdown for the README). Imports no Keras."""
    import zoo

    rows = []
    for name in zoo.list_models(task):
        card = zoo.model_card(name)
        params = f"{card.parameters / 1e6:.2f}M" if card.parameters else "n/a"
        size = card.input_label or "x".join(str(s) for s in card.input_shape)
        best = max((s.top1 for s in card.weights if s.top1 is not None), default=None)
        top1 = f"{best:.1f}" if best is not None else "n/a"
        rows.append((name, card.task, params, size, card.preprocessing, top1, weights_summary(card)))
    header = ("model", "task", "params", "input", "preprocessing", "best top-1 %", "weights")
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else r[i] for i in range(len(r))) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header) - 1)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[-1]]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines)


README_START, README_END = "<!-- models:start -->", "<!-- models:end -->"


def write_readme_table(readme: str) -> None:
    """Replace the README's model table (between its markers) with the registry's."""
    from pathlib import Path

    path = Path(readme)
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{models_table(markdown=True)}\n{README_END}{tail}")


def _load_model(args):
    """MODEL as `segment` and `explain` take it: a path (returned as is), or a registered name
    loaded with --weights (and --classes, --backbone, --alpha, --input-shape where the command has them)."""
    from pathlib import Path

    model = args.model
    if not Path(model).exists():
        import zoo

        if model not in zoo.list_models():
            raise SystemExit(f"{model!r} is neither a file, a SavedModel directory nor a registered model")
        if args.weights is None:
            raise SystemExit(f"{model} has random weights without --weights; pass the .weights.h5 it was trained to")
        options = {k: getattr(args, k, None) for k in ("classes", "backbone", "alpha")}
        options["input_shape"] = _parse_shape(getattr(args, "input_shape", None))
        model = zoo.load(model, weights=args.weights, **{k: v for k, v in options.items() if v is not None})
    return model


def _segment(args) -> None:
    from hybrid_keras.segmentation.overlay import segment_images

    model = _load_model(args)
    palette = None
    if args.palette == "camvid":
        from hybrid_keras.datasets.camvid import PALETTE

        palette = PALETTE
    written = segment_images(model, args.images, args.out, palette=palette, opacity=args.opacity)
    for path in written:
        print(path)


def _detect(args) -> None:
    from hybrid_keras.detection.visualize import detect_images

    names = args.class_names
    if names is not None:
        from pathlib import Path

        names = Path(names).read_text().split("\n") if Path(names).is_file() else names.split(",")
        names = [name.strip() for name in names if name.strip()]
    try:
        written = detect_images(_load_model(args), args.images, args.out, threshold=args.threshold, class_names=names,
                                proposal_mode=args.proposals, max_proposals=args.max_proposals)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    for path in written:
        print(path)


def _load_tracker(weights):
    from hybrid_keras.tracking.sint import DEFAULT_TRACKER, load_tracker

    try:
        return load_tracker(weights or DEFAULT_TRACKER)
    except FileNotFoundError as error:
        raise SystemExit(f"{error}. Train one with `./dev.sh bench benchmarks/tracking/sint_otb.py` (it saves to "
                         f"{DEFAULT_TRACKER}) or pass --weights.") from None


def _export_tracker(args):
    """A tracker serves two calls (initialize, track), so it exports from a saved tracker."""
    from hybrid_keras.tracking.sint import export_tracker

    return export_tracker(_load_tracker(args.weights), args.out_dir, verify=not args.no_verify)


def _track(args) -> None:
    from hybrid_keras.tracking.frames import track_folder

    try:
        box = [float(v) for v in args.box.split(",")]
    except ValueError:
        raise SystemExit(f"--box must be x,y,w,h in pixels. Received: {args.box!r}") from None
    if len(box) != 4:
        raise SystemExit(f"--box must be x,y,w,h in pixels. Received: {args.box!r}")
    tracker = _load_tracker(args.weights)
    try:
        result = track_folder(tracker, args.frames_dir, box, args.out, strip_frames=args.strip_frames)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    print(result["boxes_csv"])
    print(result["strip"])


def _explain(args) -> None:
    from hybrid_keras.explain import explain_images

    options = {"layer": args.layer, "class_index": args.class_index}
    if args.method == "deconvnet":
        options = {"layer": args.layer, "channel": args.channel, "top_k": None if args.top_k == 0 else args.top_k,
                   "rule": args.rule}
    elif args.method == "occlusion":
        options = {"class_index": args.class_index, "size": args.size, "stride": args.stride, "fill": args.fill}
    try:
        written = explain_images(_load_model(args), args.images, args.out, method=args.method, **options)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    for path in written:
        print(path)


def _sample(args) -> None:
    from hybrid_keras.sequence import load_char_model, sample

    try:
        model, vocabulary = load_char_model(args.model_weights)
        text = sample(model, vocabulary, prime=args.prime, length=args.length, temperature=args.temperature,
                      seed=args.seed)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    print(args.prime + text)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Keep the listing commands free of Keras/TensorFlow imports: they only read the registry.
    parser = argparse.ArgumentParser(prog="hybrid-keras", description="Classic vision models with hybrid solvers, exported for TF Serving.")
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("--task", default=None, help="only models of this task (e.g. classification)")
    models.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's)")
    models.add_argument("--write-readme", metavar="README", help="rewrite the table in this README file")

    card = commands.add_parser("card", help="print one model card")
    card.add_argument("name")

    export = commands.add_parser("export", help="export a zoo model as a TF Serving SavedModel")
    export.add_argument("name", help="a registered model name (see `hybrid-keras models`)")
    export.add_argument("out_dir", help="the version directory to write, e.g. saved_models/vgg16/1")
    export.add_argument("--weights", default=None, help="a weight tag, a local weights file, or omitted for random "
                                                        "weights; for a tracker (sint), a saved tracker's .weights.h5")
    export.add_argument("--classes", type=int, default=None, help="number of classes of the top (default: the weights')")
    export.add_argument("--input-shape", default=None, help="H,W,C (default: the model's)")
    export.add_argument("--no-verify", action="store_true", help="skip reloading the export in a fresh process")

    segment = commands.add_parser("segment", help="write class-colour overlays of a segmentation model's output")
    segment.add_argument("model", help="a .keras file, a SavedModel directory, or a registered segmentation model "
                                       "name (then give --weights)")
    segment.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...), any size")
    segment.add_argument("--out", required=True, help="folder for <name>_overlay.png and <name>_classes.png")
    segment.add_argument("--weights", default=None, help="with a model name: its .weights.h5 file")
    segment.add_argument("--classes", type=int, default=None, help="with a model name: its number of classes")
    segment.add_argument("--backbone", default=None, help="with a model name: its backbone (e.g. mobilenet_v2)")
    segment.add_argument("--alpha", type=float, default=None, help="with a MobileNetV2 backbone: its width")
    segment.add_argument("--palette", choices=("default", "camvid"), default="default",
                         help="class colours: distinct ones per index, or CamVid's (SegNet's)")
    segment.add_argument("--opacity", type=float, default=0.5, help="of the class colours over the photo")

    detect = commands.add_parser("detect", help="draw a detection model's boxes (and masks) on images")
    detect.add_argument("model", help="a .keras file, a SavedModel directory, or a registered detection model "
                                      "(then give --weights)")
    detect.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...), any size")
    detect.add_argument("--out", required=True, help="folder for <name>_detections.png and detections.json")
    detect.add_argument("--threshold", type=float, default=0.5, help="score a detection needs to be drawn "
                                                                       "(detections.json lists them all; default 0.5)")
    detect.add_argument("--class-names", default=None, help="names of classes 1, 2, ...: comma-separated, or a file "
                                                            "with one per line (default: 'class N')")
    detect.add_argument("--proposals", choices=("fast", "quality"), default="fast",
                        help="R-CNN and Fast R-CNN: selective search's mode (default fast)")
    detect.add_argument("--max-proposals", type=int, default=2000, help="R-CNN and Fast R-CNN: proposals per image")
    detect.add_argument("--weights", default=None, help="with a model name: its .weights.h5 file")
    detect.add_argument("--classes", type=int, default=None, help="with a model name: its number of classes")
    detect.add_argument("--backbone", default=None, help="with a model name: its backbone (e.g. mobilenet_v2)")
    detect.add_argument("--alpha", type=float, default=None, help="with a MobileNetV2 backbone: its width")
    detect.add_argument("--input-shape", default=None, help="with a model name: H,W,3 it was trained at")

    track = commands.add_parser("track", help="track one object through a folder of frames with a SINT tracker")
    track.add_argument("frames_dir", help="a folder of frames (PNG, JPEG, ...), in name order, all one size")
    track.add_argument("--box", required=True, help="x,y,w,h: the target in the first frame, in pixels")
    track.add_argument("--out", required=True, help="folder for boxes.csv and strip.png")
    track.add_argument("--weights", default=None, help="a tracker saved by hybrid_keras.tracking.save_tracker (a "
                                                       ".weights.h5 with its .json); default: the tracking benchmark's")
    track.add_argument("--strip-frames", type=int, default=8, help="frames drawn in strip.png (default 8)")

    explain = commands.add_parser("explain", help="deconvnet, occlusion or Grad-CAM pictures of what a classifier sees")
    explain.add_argument("model", help="a .keras file, or a registered model name (then give --weights)")
    explain.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...); resized to the model's input size")
    explain.add_argument("--method", choices=("deconvnet", "occlusion", "gradcam"), default="gradcam")
    explain.add_argument("--layer", default=None, help="deconvnet and gradcam: the layer (default: the last feature map)")
    explain.add_argument("--out", required=True, help="folder for <name>_<method>.png and explain_<method>.json")
    explain.add_argument("--weights", default=None, help="with a model name: its .weights.h5 file")
    explain.add_argument("--classes", type=int, default=None, help="with a model name: its number of classes")
    explain.add_argument("--alpha", type=float, default=None, help="with a MobileNetV2 model name: its width")
    explain.add_argument("--input-shape", default=None, help="with a model name: H,W,C it was trained at")
    explain.add_argument("--class-index", type=int, default=None, help="occlusion and gradcam: the class (default: top)")
    explain.add_argument("--rule", choices=("deconvnet", "guided", "gradient"), default="deconvnet",
                         help="deconvnet: the ReLUs' backward pass (guided backpropagation, or the plain gradient)")
    explain.add_argument("--channel", type=int, default=None, help="deconvnet: the feature map (default: the strongest)")
    explain.add_argument("--top-k", type=int, default=1, help="deconvnet: activations kept in the map (0: all)")
    explain.add_argument("--size", type=int, default=None, help="occlusion: the grey square's side (default: side / 7)")
    explain.add_argument("--stride", type=int, default=None, help="occlusion: its step (default: size / 2)")
    explain.add_argument("--fill", type=float, default=None, help="occlusion: its value (default: the model's mean pixel)")

    sample = commands.add_parser("sample", help="sample text from a saved character language model")
    sample.add_argument("model_weights", help="a .weights.h5 saved by hybrid_keras.sequence.save_char_model (its .json "
                                              "with the vocabulary beside it), e.g. from benchmarks/sequence/char_lm.py")
    sample.add_argument("--prime", default="def ", help="the text to continue (default 'def ')")
    sample.add_argument("--length", type=int, default=400, help="characters to generate (default 400)")
    sample.add_argument("--temperature", type=float, default=1.0, help="0: most probable character; 1: the model's "
                                                                        "distribution; lower is more conservative")
    sample.add_argument("--seed", type=int, default=0, help="random seed of the draws (default 0)")

    demo = commands.add_parser("demo", help="fine-tune, add hybrid heads, export and verify, on shipped MNIST images")
    demo.add_argument("--out", default="saved_models/demo", help="where the SavedModel versions go (default saved_models/demo)")
    demo.add_argument("--quick", action="store_true", help="fewer images and epochs (for a smoke test)")

    args = parser.parse_args(argv)
    if args.command == "models" and args.write_readme:
        write_readme_table(args.write_readme)
    elif args.command == "models":
        print(models_table(args.task, args.markdown))
    elif args.command == "card":
        import zoo

        print(zoo.model_card(args.name))
    elif args.command == "export":
        import zoo
        from hybrid_keras.export import export_saved_model, serving_command

        if args.name in zoo.list_models(task="tracking"):
            path = _export_tracker(args)
        else:
            kwargs = {}
            if args.classes is not None:
                kwargs["classes"] = args.classes
            if args.input_shape is not None:
                kwargs["input_shape"] = _parse_shape(args.input_shape)
            model = zoo.load(args.name, weights=args.weights, **kwargs)
            path = export_saved_model(model, args.out_dir, verify=not args.no_verify)
        print(f"exported {args.name} to {path}" + ("" if args.no_verify else " (verified in a fresh TensorFlow process)"))
        print("serve it with:\n  " + serving_command(path))
    elif args.command == "segment":
        _segment(args)
    elif args.command == "detect":
        _detect(args)
    elif args.command == "track":
        _track(args)
    elif args.command == "explain":
        _explain(args)
    elif args.command == "sample":
        _sample(args)
    elif args.command == "demo":
        from hybrid_keras.demo import run_demo

        run_demo(out_dir=args.out, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
