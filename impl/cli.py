"""The `miniplaces` command line (also `python -m impl`), compatible with the course's `main.py` flags. Spec: spec/cli/.

    miniplaces train DATA [course flags]        train; `-e --resume CKPT` evaluates (flip-averaged), `-a` attacks
    miniplaces synth ROOT                       write the synthetic MiniPlaces-layout dataset
    miniplaces download ROOT                    fetch and unpack the official MiniPlaces data
    miniplaces demo [--data DIR]                the main job: data, a short SimpleNet run, evaluation, a report

Each subcommand is one `_add_<name>(subparsers)` function that registers its flags and sets `func`, the function that
runs it; adding a subcommand is one such function plus one line in `build_parser`. This is the top room: it may import
every other one. Errors the user can fix exit with status 2 and one line naming the culprit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from impl.train import TrainConfig

log = logging.getLogger(__name__)

MODELS = ("simplenet", "customnet", "customnet2", "resnet18", "vit")
DEFAULT_SYNTH_ROOT = Path("data/miniplaces-synthetic")
DEFAULT_OUT = Path("logs")


class UsageError(Exception):
    """A problem with the command line or its inputs: printed as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"miniplaces {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miniplaces", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=logging.WARNING,
        default=logging.INFO,
        help="only warnings and errors",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub)
    _add_synth(sub)
    _add_download(sub)
    _add_demo(sub)
    return parser


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (so a replaced stdout, as under pytest, still gets the lines)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(level: int) -> None:
    """The project's log lines (course-format progress, results) go to stdout as plain messages."""
    logger = logging.getLogger("impl")
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------------------------
# train


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or evaluate a model (the course's main.py flags)",
        description="Train on MiniPlaces with the course's flags and defaults; with -e or -a and "
        "--resume, evaluate a checkpoint instead.",
    )
    p.add_argument("data_folder", metavar="DATA", type=Path, help="dataset root (train.txt, val.txt, images/)")
    p.add_argument("-j", "--workers", default=4, type=int, help="data-loading processes per rank (default: 4)")
    p.add_argument("--epochs", default=90, type=int, help="total epochs (default: 90)")
    p.add_argument("--warmup", default=5, type=int, help="linear-warmup epochs (default: 5)")
    p.add_argument("--clip-grad", default=1.0, type=float, help="gradient-norm clip, ViT only (default: 1.0)")
    p.add_argument("-b", "--batch-size", default=256, type=int, help="global mini-batch size (default: 256)")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, dest="lr", help="peak learning rate")
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum (default: 0.9)")
    p.add_argument(
        "--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay (default: 1e-4)"
    )
    p.add_argument("-p", "--print-freq", default=10, type=int, help="iterations between log lines (default: 10)")
    p.add_argument("--resume", default=None, type=Path, metavar="PATH", help="checkpoint to continue or evaluate")
    p.add_argument(
        "-e", "--evaluate", action="store_true", help="evaluate the --resume checkpoint on val with flip averaging"
    )
    p.add_argument("-a", "--attack", action="store_true", help="evaluate the --resume checkpoint under PGD attack")
    p.add_argument("-v", "--vis", action="store_true", help="with -e/-a: write image grids to TensorBoard")
    p.add_argument("--use-custom-conv", action="store_true", help="SimpleNet with CustomConv2d")
    p.add_argument("--use-resnet18", action="store_true", help="ImageNet-pretrained ResNet18 (= --model resnet18)")
    p.add_argument("--use-vit", action="store_true", help="the SimpleViT (= --model vit)")
    p.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="architecture (default: from --use-* flags, else the checkpoint's, else simplenet)",
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="imagenet|PATH",
        help="resnet18 initial weights (default: imagenet with --use-resnet18, none with --model)",
    )
    p.add_argument("--gpu", default=None, type=int, metavar="N", help="CUDA device index; -1 means CPU (course flag)")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        default="off",
        choices=("off", "bf16", "fp16"),
        help="mixed precision autocast (bare --amp means bf16; fp16 needs CUDA)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", default=2022, type=int, help="random seed (default: the course's 2022)")
    p.add_argument(
        "--out",
        default=None,
        type=Path,
        metavar="DIR",
        help="parent of the run folder <DIR>/<date-time>-<model>/ (default: logs; without --out, a --resume "
        "continues in the checkpoint's run folder)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_train)


def _check_train_args(args: argparse.Namespace) -> None:
    if args.evaluate and args.attack:
        raise UsageError("-e/--evaluate and -a/--attack are exclusive: choose one")
    if (args.evaluate or args.attack) and args.resume is None:
        flag = "-e/--evaluate" if args.evaluate else "-a/--attack"
        raise UsageError(f"{flag} needs --resume CHECKPOINT (the course would silently train instead)")
    if args.vis and not (args.evaluate or args.attack):
        raise UsageError("-v/--vis works with -e or -a only")
    chosen = [f for f in ("use_resnet18", "use_vit") if getattr(args, f)]
    if len(chosen) > 1 or (chosen and args.model not in (None, chosen[0].removeprefix("use_"))):
        raise UsageError(f"conflicting model flags: --model {args.model} with {', '.join(chosen)}")
    if args.use_custom_conv and _model_name(args, None) != "simplenet":
        raise UsageError("--use-custom-conv applies to SimpleNet only")
    if not args.data_folder.is_dir():
        raise UsageError(f"dataset folder {args.data_folder} does not exist (make one with `miniplaces synth ROOT`)")


def _model_name(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> str:
    if args.use_resnet18:
        return "resnet18"
    if args.use_vit:
        return "vit"
    if args.model:
        return args.model
    if ckpt is not None and ckpt.get("model_arch") in MODELS:
        return str(ckpt["model_arch"])
    return "simplenet"


def build_model(name: str, num_classes: int, *, custom_conv: bool = False, weights: str | None = None) -> nn.Module:
    """The network called `name` (one of MODELS) with a `num_classes`-way head."""
    import impl.models as models

    if name == "simplenet":
        if custom_conv:
            from impl.conv import CustomConv2d

            return models.SimpleNet(conv_op=CustomConv2d, num_classes=num_classes)
        return models.SimpleNet(num_classes=num_classes)
    if name == "customnet":
        return models.CustomNet(num_classes=num_classes)
    if name == "customnet2":
        return models.CustomNet2(num_classes=num_classes)
    if name == "resnet18":
        return models.resnet18(num_classes=num_classes, weights=weights)
    if name == "vit":
        return models.SimpleViT(num_classes=num_classes)
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def _device_name(args: argparse.Namespace) -> str:
    if args.device is not None and args.gpu is not None:
        raise UsageError("give --device or --gpu, not both")
    if args.gpu is not None:
        return "cpu" if args.gpu < 0 else f"cuda:{args.gpu}"
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_device(args: argparse.Namespace, local_rank: int | None) -> torch.device:
    """The device from --device/--gpu; under torchrun on CUDA each rank takes cuda:LOCAL_RANK."""
    name = _device_name(args)
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a torch device: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name} requested but CUDA is not available here (use --device cpu)")
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    return device


def _init_distributed(device_type: str) -> int | None:
    """Join the torchrun process group when launched by torchrun; returns the local rank (None when alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return int(os.environ.get("LOCAL_RANK", "0"))


def _train_config(args: argparse.Namespace, model_arch: str) -> TrainConfig:
    from impl.train import TrainConfig

    vit = model_arch == "vit"
    try:
        return TrainConfig(
            model_arch=model_arch,
            epochs=args.epochs,
            warmup=args.warmup,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            optimizer="adamw" if vit else "sgd",
            clip_grad=args.clip_grad if vit else 0.0,
            workers=args.workers,
            print_freq=args.print_freq,
            seed=args.seed,
            amp=args.amp,
            compile=args.compile,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _run_dir_for(args: argparse.Namespace, model_arch: str) -> Path:
    """A resumed run continues in its own folder (`<run>/models/checkpoint.pth.tar` -> `<run>`), as the course does."""
    from impl.train import new_run_dir

    if args.resume is not None and args.resume.resolve().parent.name == "models" and args.out is None:
        return args.resume.resolve().parent.parent
    return new_run_dir(args.out or DEFAULT_OUT, model_arch)


def run_train(args: argparse.Namespace) -> int:
    from impl.data import DataError, MiniPlaces, train_transform, val_transform
    from impl.train import (
        CheckpointError,
        TrainingDiverged,
        dist_info,
        fit,
        load_checkpoint,
        load_weights,
        make_eval_loader,
        make_train_loader,
        seed_everything,
    )

    _check_train_args(args)
    local_rank = _init_distributed("cuda" if _device_name(args).startswith("cuda") else "cpu")
    device = _resolve_device(args, local_rank)
    info = dist_info()
    if not info.is_main:  # one copy of the course-format lines, from rank 0
        logging.getLogger("impl").setLevel(logging.WARNING)
    try:
        ckpt = load_checkpoint(args.resume) if args.resume is not None else None
        model_arch = _model_name(args, ckpt)
        cfg = _train_config(args, model_arch)
        val_set = MiniPlaces(args.data_folder, "val", transform=val_transform())
        seed_everything(cfg.seed)
        weights = args.weights or ("imagenet" if args.use_resnet18 and ckpt is None else None)
        model = build_model(model_arch, val_set.num_classes, custom_conv=args.use_custom_conv, weights=weights)
        model = model.to(device)
        pin = device.type == "cuda"
        val_loader = make_eval_loader(val_set, cfg.val_batch_size, workers=cfg.workers, info=info, pin_memory=pin)
        if args.evaluate or args.attack:
            load_weights(model, ckpt, args.resume)  # type: ignore[arg-type]
            run_dir = _run_dir_for(args, model_arch)
            return (
                run_attack(args, model, val_loader, device, run_dir)
                if args.attack
                else run_evaluate(args, model, val_loader, device, run_dir)
            )
        train_set = MiniPlaces(args.data_folder, "train", transform=train_transform())
        if train_set.num_classes != val_set.num_classes:
            raise UsageError(f"train has {train_set.num_classes} classes but val has {val_set.num_classes}")
        train_loader = make_train_loader(train_set, cfg, info=info, pin_memory=pin)
        run_dir = _run_dir_for(args, model_arch)
        if info.is_main:
            log.info("run folder: %s", run_dir)
            log.info("Training time data augmentations:\n%s", train_set.transform)
        with _progress_logging(args.progress):
            result = fit(
                model,
                train_loader,
                val_loader,
                cfg,
                device=device,
                run_dir=run_dir,
                resume=args.resume,
                progress=args.progress,
            )
    except (DataError, CheckpointError, ValueError, KeyError) as exc:
        raise UsageError(str(exc)) from exc
    except TrainingDiverged as exc:
        print(f"miniplaces train: training diverged: {exc}", file=sys.stderr)
        return 3
    if info.is_main and result.history:
        last = result.history[-1]
        log.info(
            "done: epoch %d, val top-1 %.2f%%, best %s %.2f; checkpoints in %s",
            last["epoch"],
            last["val_top1"],
            cfg.best_metric,
            result.best_score,
            run_dir / "models",
        )
    return 0


def _progress_logging(enabled: bool) -> Any:
    """Route log lines through tqdm while bars are shown, so they do not tear the bar."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def run_evaluate(
    args: argparse.Namespace, model: nn.Module, val_loader: Any, device: torch.device, run_dir: Path
) -> int:
    """`-e`: the course's evaluation, logits averaged with the horizontally flipped image."""
    from impl.train import evaluate

    log.info("Testing the model ...")
    metrics = evaluate(model, val_loader, device=device, flip=True, amp=args.amp, print_freq=args.print_freq)
    if args.vis:
        _write_image_grid(run_dir, "Image/Image", next(iter(val_loader))[0])
    print(f"val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}")
    return 0


def run_attack(args: argparse.Namespace, model: nn.Module, val_loader: Any, device: torch.device, run_dir: Path) -> int:
    """`-a`: accuracy on adversarial examples of the val set (the attack room supplies the attack).

    Uses the course interface, `PGDAttack(loss_fn).perturb(model, input)`, from impl.attack.
    """
    from impl.train import evaluate

    try:
        from impl.attack import PGDAttack
    except ImportError as exc:
        raise UsageError(f"-a/--attack needs impl.attack.PGDAttack, which cannot be imported: {exc}") from exc
    attacker = PGDAttack(nn.CrossEntropyLoss())
    log.info("Generating adversarial samples for the model ..")
    metrics = evaluate(
        model,
        val_loader,
        device=device,
        perturb=lambda m, x, y: attacker.perturb(m, x),
        amp=args.amp,
        print_freq=args.print_freq,
    )
    if args.vis:
        images = next(iter(val_loader))[0].to(device)
        _write_image_grid(run_dir, "Image/Org_Image", images)
        _write_image_grid(run_dir, "Image/Adv_Image", attacker.perturb(model, images))
    print(f"adversarial val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%")
    return 0


def _write_image_grid(run_dir: Path, tag: str, images: torch.Tensor) -> None:
    """Un-normalized images as one TensorBoard grid (the course's `-v`)."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    from impl.data import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    grid = make_grid((images[:16].detach() * std + mean).clamp(0, 1).cpu(), nrow=4)
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_image(tag, grid, 0)
    log.info("wrote %s to TensorBoard in %s", tag, run_dir)


# ---------------------------------------------------------------------------------------------------------------------
# synth, download


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the SYNTHETIC MiniPlaces-layout dataset (procedural scenes)")
    p.add_argument("root", type=Path, metavar="ROOT", help="folder to create")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from impl.data import DataError, make_synthetic

    try:
        root = make_synthetic(
            args.root,
            num_classes=args.num_classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            seed=args.seed,
        )
    except (DataError, ValueError, OSError) as exc:
        raise UsageError(str(exc)) from exc
    print(f"synthetic MiniPlaces-layout dataset written to {root}")
    return 0


def _add_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download and unpack the official MiniPlaces data.tar.gz")
    p.add_argument("root", type=Path, metavar="ROOT", help="folder to unpack into")
    p.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    from impl.data import DownloadError, download

    try:
        root = download(args.root)
    except DownloadError as exc:
        raise UsageError(str(exc)) from exc
    print(f"MiniPlaces data ready in {root}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: synthetic data (unless --data), SimpleNet, evaluation, report",
        description="Makes the synthetic dataset if absent (or uses --data), trains SimpleNet for a "
        "few epochs, evaluates the best checkpoint with flip averaging and writes report.md with its "
        "curves into the run folder.",
    )
    p.add_argument("--data", type=Path, default=None, metavar="DIR", help="a real MiniPlaces root (default: synthetic)")
    p.add_argument(
        "--synth-root",
        type=Path,
        default=DEFAULT_SYNTH_ROOT,
        metavar="DIR",
        help=f"where the synthetic set lives or is made (default: {DEFAULT_SYNTH_ROOT})",
    )
    p.add_argument("--model", choices=MODELS, default="simplenet")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help="parent of the run folder")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from impl.data import MiniPlaces, make_synthetic, val_transform
    from impl.report import write_report
    from impl.train import evaluate, load_checkpoint, load_weights, make_eval_loader

    synthetic = args.data is None
    data = args.synth_root if synthetic else args.data
    if synthetic and not (data / "train.txt").is_file():
        log.info("making the SYNTHETIC dataset in %s", data)
        make_synthetic(data)
    elif not synthetic and not data.is_dir():
        raise UsageError(f"--data {data} does not exist")
    train_argv = [
        "train",
        str(data),
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--warmup",
        str(args.warmup),
        "-b",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "-j",
        str(args.workers),
        "--seed",
        str(args.seed),
        "--out",
        str(args.out),
    ]
    if args.device:
        train_argv += ["--device", args.device]
    if not args.progress:
        train_argv.append("--no-progress")
    train_args = build_parser().parse_args(train_argv)
    train_args.out.mkdir(parents=True, exist_ok=True)
    before = set(train_args.out.iterdir())
    status = run_train(train_args)
    if status:
        return status
    (run_dir,) = [p for p in train_args.out.iterdir() if p not in before]
    best = run_dir / "models" / "model_best.pth.tar"
    device = _resolve_device(train_args, None)
    val_set = MiniPlaces(data, "val", transform=val_transform())
    model = build_model(args.model, val_set.num_classes).to(device)
    load_weights(model, load_checkpoint(best, device), best)
    log.info("evaluating %s with flip averaging", best)
    final = evaluate(model, make_eval_loader(val_set, 100, workers=args.workers), device=device, flip=True)
    report = write_report(
        run_dir,
        data=data,
        synthetic=synthetic,
        model_arch=args.model,
        flip_eval=final,
        classes=val_set.classes,
        device=str(device),
    )
    print(f"report: {report}")
    return 0
