"""The `miniplaces` command line (also `python -m impl`), compatible with the course's `main.py` flags. Spec: spec/cli/.

    miniplaces train DATA [course flags]        train; `-e --resume CKPT` evaluates (flip-averaged), `-a` attacks
    miniplaces attack DATA --resume CKPT        robustness report of a checkpoint (= train -a), sweeps, figures
    miniplaces synth ROOT                       write the synthetic MiniPlaces-layout dataset
    miniplaces download ROOT                    fetch and unpack the official MiniPlaces data
    miniplaces demo [--data DIR]                the main job: data, a short SimpleNet run, evaluation, a report

Each subcommand is one `_add_<name>(subparsers)` function that registers its flags and sets `func`, the function that
runs it; adding a subcommand is one such function plus one line in `build_parser`. Jobs a test or a notebook can call
live beside it: the demo in impl/demo.py, the robustness report in impl/robustness.py; this module parses flags and
dispatches. This is the top room: it may import every other one. Errors the user can fix exit with status 2 and one
line naming the culprit (the flag the user typed, or the file), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from impl.errors import UsageError
from impl.models.build import MODELS, UnknownModel, build_model

if TYPE_CHECKING:
    from impl.adversarial import AdversarialTraining
    from impl.train import TrainConfig, WeightsMismatch

log = logging.getLogger(__name__)

# the course's main.py writes model_arch "CNN" (its default_cnn_model), "ViT" or "ResNet" into its checkpoints
COURSE_ARCHS = {"CNN": "simplenet", "ViT": "vit", "ResNet": "resnet18"}
# the flag that sets each field of the library's configurations, so that a message names what the user typed;
# TrainConfig's fields take the course's flags (impl.train.COURSE_FLAGS)
FLAGS: dict[str, dict[str, str]] = {
    "AttackSpec": {"eps": "--attack-eps", "alpha": "--attack-alpha", "steps": "--attack-steps"},
    "AdvTrainConfig": {"method": "--adv-train", "eps": "--adv-eps", "alpha": "--adv-alpha", "steps": "--adv-steps"},
}
DEFAULT_OUT = Path("logs")


def _one_line(exc: BaseException) -> str:
    """The message of `exc`; for one re-raised from a DataLoader worker, the original's (torch puts the worker's whole
    traceback in the message, and its last line is `module.Type: message`)."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    kind = type(exc)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        if last.startswith(prefix):
            return last.removeprefix(prefix)
    return last


def name_flags(message: str) -> str:
    """`TrainConfig.workers must be ...` -> `-j must be ...`: each `Config.field` or `Config: field` the FLAGS table
    knows becomes its flag; the rest of the message is kept."""
    from impl.train import COURSE_FLAGS

    flags = {"TrainConfig": COURSE_FLAGS, **FLAGS}

    def flag(match: re.Match[str]) -> str:
        return flags[match.group(1)].get(match.group(2), match.group(0))

    return re.sub(r"\b(" + "|".join(flags) + r")(?:\.|: )(\w+)", flag, message)


# the flags with two spellings; messages use the first, or the second where the user typed that one
ALIASES = (("-b", "--batch-size"), ("-j", "--workers"), ("-p", "--print-freq"), ("--wd", "--weight-decay"),
           ("--lr", "--learning-rate"), ("-e", "--evaluate"), ("-a", "--attack"), ("-v", "--vis"))  # fmt: skip


def as_typed(message: str, argv: Sequence[str]) -> str:
    """Spell each flag of `message` as the user did: `-b must be >= 1` becomes `--batch-size must be >= 1` after
    `--batch-size 0` (the spelling typed last wins, as in argparse; `-e/--evaluate` is left alone)."""
    last = {a.split("=", 1)[0]: i for i, a in enumerate(argv)}  # where each flag was last typed (the one that counts)
    for short, long in ALIASES:
        if last.get(long, -1) > last.get(short, -1):
            message = re.sub(rf"(?<![\w/-]){re.escape(short)}(?![\w/-])", long, message)
    return message


def os_error_line(exc: OSError) -> str:
    """A failed write in one line: which file, and whether the disk is full or the place is not writable."""
    where = exc.filename or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device for {where}: free some space and run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where} is not writable ({exc.strerror}): choose another folder with --out"
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{where}: a file stands where a folder is needed"
    return f"{where}: {exc.strerror or exc}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        message = as_typed(str(exc), sys.argv[1:] if argv is None else argv)
        print(f"miniplaces {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(_interrupted_line(exc), file=sys.stderr)
        return 130


def _interrupted_line(exc: KeyboardInterrupt) -> str:
    from impl.train import TrainingInterrupted

    if not isinstance(exc, TrainingInterrupted):
        return "interrupted"
    if exc.checkpoint is None:
        return "interrupted before the first epoch completed: no checkpoint to resume from"
    return f"interrupted; to continue, run the same command with --resume {exc.checkpoint}"


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
    _add_attack(sub)
    _add_synth(sub)
    _add_download(sub)
    _add_demo(sub)
    __import__("impl.verify", fromlist=["add_parser"]).add_parser(sub)  # check a student_code.py: report card
    _add_reproduce(sub)
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
    p.add_argument(
        "--warmup",
        default=5,
        type=int,
        help="linear-warmup epochs (default: 5; as in the course, --warmup >= --epochs makes the whole run warmup)",
    )
    p.add_argument(
        "--start-epoch",
        default=0,
        type=int,
        metavar="E0",
        help="epochs counted as done when starting without --resume (course flag; a --resume takes the checkpoint's)",
    )
    p.add_argument("--clip-grad", default=1.0, type=float, help="gradient-norm clip, ViT only (default: 1.0)")
    p.add_argument("-b", "--batch-size", default=256, type=int, help="global mini-batch size (default: 256)")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, dest="lr", help="peak learning rate")
    p.add_argument("--momentum", default=0.9, type=float, help="SGD momentum (default: 0.9)")
    p.add_argument(
        "--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay", help="weight decay (default: 1e-4)"
    )
    p.add_argument("-p", "--print-freq", default=10, type=int, help="iterations between log lines (default: 10)")
    p.add_argument(
        "--resume",
        default=None,
        type=Path,
        metavar="PATH",
        help="checkpoint to continue (with the same -b, --epochs, --warmup, --lr, --wd, --momentum) or evaluate",
    )
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
    p.add_argument("--channels-last", action="store_true", help="weights and batches in channels_last (NHWC) memory")
    p.add_argument(
        "--data-on-device",
        action="store_true",
        help="train and validate from the decoded uint8 cache of each split held whole on the device, augmented in "
        "batches there (impl.data.gpu; no -j workers); the first run decodes the cache",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        type=Path,
        metavar="DIR",
        help="with --data-on-device: the uint8 caches' folder (default: $MINIPLACES_CACHE or ~/.cache/miniplaces-lab)",
    )
    p.add_argument("--seed", default=2022, type=int, help="random seed (default: the course's 2022)")
    p.add_argument(
        "--no-sync-bn",
        dest="sync_bn",
        action="store_false",
        help="under torchrun: BatchNorm normalizes with each rank's own batch (default: the global batch, as one "
        "process would)",
    )
    p.add_argument(
        "--out",
        default=None,
        type=Path,
        metavar="DIR",
        help="parent of the run folder <DIR>/<date-time>-<model>/ (default: logs; without --out, a --resume "
        "continues in the checkpoint's run folder)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _add_attack_flags(p)
    _add_adversarial_flags(p)
    p.set_defaults(func=run_train)


def _fraction(text: str) -> float:
    """A float, or a fraction such as 8/255 (pixel budgets are usually written that way)."""
    try:
        num, _, den = text.partition("/")
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"not a number or a fraction like 8/255: {text!r}") from exc


def _add_attack_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "attack (-a)",
        "robustness of the --resume checkpoint on val: clean vs adversarial top-1/top-5, a sanity report, figures. "
        "Units: normalized in course mode (the seed's PGDAttack), [0, 1] pixels in pixel mode (torchattacks).",
    )
    g.add_argument(
        "--attack-mode",
        choices=("course", "pixel"),
        default="course",
        help="course: PGD toward the least confident label, normalized units (default); pixel: untargeted L∞ PGD",
    )
    g.add_argument("--attack-eps", type=_fraction, default=None, help="L∞ radius (default: 0.1 course, 8/255 pixel)")
    g.add_argument("--attack-alpha", type=_fraction, default=None, help="step (default: 0.01 course, 2/255 pixel)")
    g.add_argument("--attack-steps", type=int, default=10, help="PGD iterations (default: 10)")
    g.add_argument(
        "--attack-early-stop",
        action="store_true",
        help="pixel mode: stop attacking an image once it is misclassified (cheaper; robust accuracy never higher "
        "than the full run's; the report says so)",
    )
    g.add_argument(
        "--attack-sweep",
        action="store_true",
        help="the seed's tables: steps {5, 10, 20}, eps x {0.5, 1, 1.5} (alpha scaled alike, so each row's steps span "
        "its ball; the table's 'step α' column shows it), FGSM and noise baselines, a large-eps probe",
    )
    g.add_argument("--attack-batches", type=int, default=None, metavar="N", help="attack the first N val batches only")
    g.add_argument(
        "--attack-figures", type=int, default=4, metavar="N", help="4-panel PNGs written to <run>/attack/ (default: 4)"
    )


def _add_adversarial_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "adversarial training",
        "train on adversarial examples (pixel units); validation adds PGD-10 accuracy and model_best follows it",
    )
    g.add_argument(
        "--adv-train", choices=("pgd", "fgsm-rs"), default=None, help="Madry PGD-k or FGSM with random start"
    )
    g.add_argument("--adv-eps", type=_fraction, default=8 / 255, help="L∞ radius in pixels (default: 8/255)")
    g.add_argument("--adv-alpha", type=_fraction, default=None, help="step (default: 0.01 pgd, 1.25*eps fgsm-rs)")
    g.add_argument("--adv-steps", type=int, default=3, help="PGD steps during training (default: 3, the seed's)")
    g.add_argument(
        "--adv-val-images",
        type=int,
        default=1000,
        metavar="N",
        help="val images attacked (PGD-10) after each epoch (default: 1000)",
    )


def _check_train_args(args: argparse.Namespace) -> None:
    if args.evaluate and args.attack:
        raise UsageError("-e/--evaluate and -a/--attack are exclusive: choose one")
    if (args.evaluate or args.attack) and args.resume is None:
        flag = "-e/--evaluate" if args.evaluate else "-a/--attack"
        raise UsageError(f"{flag} needs --resume CHECKPOINT (the course would silently train instead)")
    if args.vis and not (args.evaluate or args.attack):
        raise UsageError("-v/--vis works with -e or -a only")
    if args.adv_train and (args.evaluate or args.attack):
        raise UsageError("--adv-train trains; it does not combine with -e or -a")
    _check_device_data_args(args)
    if args.attack_steps < 1 or (args.attack_batches is not None and args.attack_batches < 1):
        got = f"{args.attack_steps}, {args.attack_batches}"
        raise UsageError(f"--attack-steps and --attack-batches must be >= 1, got {got}")
    if args.adv_val_images < 1 or args.adv_steps < 1:
        raise UsageError(f"--adv-val-images and --adv-steps must be >= 1, got {args.adv_val_images}, {args.adv_steps}")
    if args.attack_early_stop and args.attack_mode != "pixel":
        raise UsageError("--attack-early-stop needs --attack-mode pixel (the course mode's targeted PGD has none)")
    if args.attack_figures < 0:
        raise UsageError(f"--attack-figures must be >= 0 (0 draws none), got {args.attack_figures}")
    if not 0 <= args.start_epoch <= args.epochs:
        raise UsageError(f"--start-epoch must be in [0, --epochs {args.epochs}], got {args.start_epoch}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    chosen = [f for f in ("use_resnet18", "use_vit") if getattr(args, f)]
    if len(chosen) > 1 or (chosen and args.model not in (None, chosen[0].removeprefix("use_"))):
        raise UsageError(f"conflicting model flags: --model {args.model} with {', '.join(chosen)}")
    if args.use_custom_conv and _model_name(args, None) != "simplenet":
        raise UsageError("--use-custom-conv applies to SimpleNet only")
    if args.weights is not None and _model_name(args, None) != "resnet18":
        raise UsageError("--weights applies to resnet18 only: add --model resnet18 (or --use-resnet18)")
    if not args.data_folder.is_dir():
        raise UsageError(f"dataset folder {args.data_folder} does not exist (make one with `miniplaces synth ROOT`)")


def _check_device_data_args(args: argparse.Namespace) -> None:
    """--data-on-device trains one process from the caches; --cache-dir only means something with it."""
    if args.cache_dir is not None and not args.data_on_device:
        raise UsageError("--cache-dir applies to --data-on-device only")
    if args.data_on_device and (args.evaluate or args.attack):
        raise UsageError("--data-on-device trains; -e and -a evaluate through the course's loader: drop one")
    if args.channels_last and (args.evaluate or args.attack):
        raise UsageError("--channels-last applies to training; -e and -a evaluate in the checkpoint's layout: drop one")
    if args.data_on_device and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--data-on-device runs in one process: under torchrun every rank would train on the whole set")


def _device_loaders(args: argparse.Namespace, cfg: TrainConfig, device: torch.device) -> Any:
    """(train, val) DeviceLoaders of --data-on-device, from each split's uint8 cache (decoded on first use)."""
    from impl.data.gpu import cached_loader
    from impl.experiments import device_train_loader

    train = device_train_loader(args.data_folder, cfg, 128, device, args.progress, cache_dir=args.cache_dir)
    val = cached_loader(args.data_folder, "val", cfg.val_batch_size, device=device, seed=cfg.seed,
                        channels_last=cfg.channels_last, cache_dir=args.cache_dir, progress=args.progress)  # fmt: skip
    return train, val


def _model_name(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> str:
    if args.use_resnet18:
        return "resnet18"
    if args.use_vit:
        return "vit"
    if args.model:
        return args.model
    arch = ckpt.get("model_arch") if ckpt is not None else None
    if arch in MODELS:
        return str(arch)
    if arch in COURSE_ARCHS:
        return COURSE_ARCHS[str(arch)]
    return "simplenet"


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


def _cap_workers(workers: int) -> int:
    """At most one loader process per CPU this process may use: above that torch prints a multi-line warning, and
    the run is slower, not faster (results do not depend on -j)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers <= cpus:
        return workers
    log.info("-j %d capped at the %d CPUs this process may use", workers, cpus)
    return cpus


def _train_config(args: argparse.Namespace, model_arch: str) -> TrainConfig:
    from impl.train import ConfigError, TrainConfig

    vit = model_arch == "vit"
    workers = _cap_workers(args.workers)
    try:
        cfg = TrainConfig(
            model_arch=model_arch,
            epochs=args.epochs,
            warmup=args.warmup,
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            optimizer="adamw" if vit else "sgd",
            clip_grad=args.clip_grad if vit else 0.0,
            workers=workers,
            print_freq=args.print_freq,
            seed=args.seed,
            amp=args.amp,
            compile=args.compile,
            channels_last=args.channels_last,
            sync_bn=args.sync_bn,
        )
    except ConfigError as exc:
        raise UsageError(name_flags(str(exc))) from exc
    if cfg.warmup >= cfg.epochs and not args.evaluate and not args.attack:
        reached = cfg.eta_min + (cfg.lr - cfg.eta_min) * cfg.epochs / cfg.warmup
        log.warning(
            "--warmup %d >= --epochs %d: as in the course, the whole run is linear warmup, and the learning rate "
            "ends at %.4g (--lr %g) with no cosine decay",
            cfg.warmup, cfg.epochs, reached, cfg.lr,
        )  # fmt: skip
    return cfg


def _run_dir_for(args: argparse.Namespace, model_arch: str) -> Path:
    """A resumed run continues in its own folder (`<run>/models/checkpoint.pth.tar` -> `<run>`), as the course does."""
    from impl.train import new_run_dir

    if args.resume is not None and args.resume.resolve().parent.name == "models" and args.out is None:
        return args.resume.resolve().parent.parent
    return new_run_dir(args.out or DEFAULT_OUT, model_arch, create=not args.evaluate)


def _says_complete(args: argparse.Namespace, ckpt: dict[str, Any], cfg: TrainConfig) -> bool:
    """A resume of a finished run trains nothing: say so, and how to use the checkpoint (exit status 0)."""
    done = int(ckpt.get("epoch", 0))
    planned = int((ckpt.get("config") or {}).get("epochs", cfg.epochs))
    if done < planned:
        return False
    from impl.train import COURSE_FLAGS, RESUME_FIXED

    saved = ckpt.get("config") or {}
    differ = [f"{COURSE_FLAGS[k]} {getattr(cfg, k)} (the run's: {saved[k]})" for k in RESUME_FIXED
              if k != "epochs" and k in saved and saved[k] != getattr(cfg, k)]  # fmt: skip
    ignored = f" Ignored, as nothing trains: {', '.join(differ)}." if differ else ""
    print(
        f"{args.resume} is complete ({done} of {planned} epochs): nothing to train. Evaluate it with "
        f"`miniplaces train {args.data_folder} -e --resume {args.resume}`; a longer schedule is a new run "
        f"(its cosine has ended, so it cannot be extended).{ignored}"
    )
    return True


def _build_for(args: argparse.Namespace, model_arch: str, num_classes: int, *, from_scratch: bool) -> nn.Module:
    """The model the flags ask for; a missing or unreadable resnet18 weights file is a usage error naming the flag."""
    weights = args.weights or ("imagenet" if args.use_resnet18 and from_scratch else None)
    try:
        return build_model(model_arch, num_classes, custom_conv=args.use_custom_conv, weights=weights)
    except UnknownModel as exc:
        raise UsageError(str(exc)) from exc
    except (FileNotFoundError, ValueError) as exc:
        flag = f"--weights {args.weights}" if args.weights else "--use-resnet18"
        raise UsageError(f"{flag}: {exc}") from exc


def _mismatch_line(exc: WeightsMismatch, args: argparse.Namespace, model_arch: str, val_set: Any) -> str:
    """What the checkpoint holds against what the data (class count) or the flags (architecture) ask for."""
    if exc.classes is not None:
        source = "categories.txt" if (args.data_folder / "categories.txt").is_file() else "the labels of val.txt"
        return f"{exc}; the data in {args.data_folder} has {val_set.num_classes} classes ({source})"
    chosen = args.model or ("resnet18" if args.use_resnet18 else "vit" if args.use_vit else None)
    if chosen is not None:
        return f"{exc}; the flags ask for {chosen}: drop --model/--use-* to take the checkpoint's architecture"
    return f"{exc}; name its architecture with --model ({', '.join(MODELS)})"


def run_train(args: argparse.Namespace) -> int:
    """`miniplaces train`: its exit status."""
    return train_command(args)[0]


def train_command(args: argparse.Namespace) -> tuple[int, Path | None]:
    """Run `miniplaces train` as parsed into `args`; returns the exit status and the run folder (None when a
    complete run was resumed: nothing written)."""
    from impl.adversarial import CatastrophicOverfitting
    from impl.data import DataError, MiniPlaces, train_transform, val_transform
    from impl.train import (
        CheckpointError,
        ConfigError,
        RunFolderBusy,
        TrainingDiverged,
        WeightsMismatch,
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
        if ckpt is not None and not (args.evaluate or args.attack) and _says_complete(args, ckpt, cfg):
            return 0, None
        val_set = MiniPlaces(args.data_folder, "val", transform=val_transform())
        seed_everything(cfg.seed)
        model = _build_for(args, model_arch, val_set.num_classes, from_scratch=ckpt is None).to(device)
        if ckpt is not None:  # before any training or evaluation: a checkpoint that does not fit says so in one line
            try:
                load_weights(model, ckpt, args.resume)  # type: ignore[arg-type]
            except WeightsMismatch as exc:
                raise UsageError(_mismatch_line(exc, args, model_arch, val_set)) from exc
            if args.start_epoch not in (0, int(ckpt.get("epoch", 0))):
                log.info("--start-epoch %d ignored: a resume starts after the checkpoint's epoch %d, as in the course",
                         args.start_epoch, int(ckpt.get("epoch", 0)))  # fmt: skip
        pin = device.type == "cuda"
        val_loader = make_eval_loader(val_set, cfg.val_batch_size, workers=cfg.workers, info=info, pin_memory=pin)
        if args.evaluate or args.attack:
            run_dir = _run_dir_for(args, model_arch)
            run = run_attack if args.attack else run_evaluate
            return run(args, model, val_loader, device, run_dir), run_dir
        train_set = MiniPlaces(args.data_folder, "train", transform=train_transform())
        if train_set.num_classes != val_set.num_classes:
            raise UsageError(f"train has {train_set.num_classes} classes but val has {val_set.num_classes}")
        if args.data_on_device:
            train_loader, val_loader = _device_loaders(args, cfg, device)
        else:
            train_loader = make_train_loader(train_set, cfg, info=info, pin_memory=pin)
        adversarial = _adversarial_training(args, val_set, cfg, device, info, pin)
        if adversarial is not None:
            cfg = dataclasses.replace(cfg, best_metric=adversarial.best_metric)
        run_dir = _run_dir_for(args, model_arch)
        if info.is_main:
            log.info("run folder: %s", run_dir)
            augment = f"on {device}, in batches: {train_loader.augment}" if args.data_on_device else train_set.transform
            log.info("Training time data augmentations:\n%s", augment)
        with _progress_logging(args.progress):
            result = fit(
                model,
                train_loader,
                val_loader,
                cfg,
                device=device,
                run_dir=run_dir,
                resume=args.resume,
                start_epoch=args.start_epoch if args.resume is None else 0,
                progress=args.progress,
                perturb=adversarial.perturb if adversarial is not None else None,
                extra_evals=adversarial.extra_evals if adversarial is not None else (),
            )
    except (DataError, CheckpointError, ConfigError, RunFolderBusy) as exc:  # ours; anything else is a bug
        raise UsageError(name_flags(_one_line(exc))) from exc
    except OSError as exc:
        raise UsageError(os_error_line(exc)) from exc
    except TrainingDiverged as exc:
        print(f"miniplaces train: training diverged: {exc}", file=sys.stderr)
        return 3, run_dir
    except CatastrophicOverfitting as exc:
        print(f"miniplaces train: {exc}", file=sys.stderr)
        return 4, run_dir
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
    return 0, run_dir


def _add_attack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attack",
        help="robustness of a checkpoint on val (= train DATA -a --resume CKPT)",
        description="Clean vs adversarial top-1/top-5 of the --resume checkpoint over the val set, the sanity report, "
        "4-panel figures and (-v) TensorBoard grids, written into the checkpoint's run folder.",
    )
    p.add_argument("data_folder", metavar="DATA", type=Path, help="dataset root (val.txt, images/)")
    p.add_argument("--resume", required=True, type=Path, metavar="PATH", help="checkpoint to attack")
    p.add_argument("-v", "--vis", action="store_true", help="write Image/Org_Image and Image/Adv_Image to TensorBoard")
    p.add_argument("-j", "--workers", default=4, type=int, help="data-loading processes (default: 4)")
    p.add_argument("--model", choices=MODELS, default=None, help="architecture (default: the checkpoint's)")
    p.add_argument("--gpu", default=None, type=int, metavar="N", help="CUDA device index; -1 means CPU (course flag)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--amp", nargs="?", const="bf16", default="off", choices=("off", "bf16", "fp16"), help="autocast dtype"
    )
    p.add_argument("--out", default=None, type=Path, metavar="DIR", help="write into a new run folder under DIR")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    _add_attack_flags(p)
    p.set_defaults(func=run_attack_command)


def run_attack_command(args: argparse.Namespace) -> int:
    """`miniplaces attack`: `train -a` with the train command's defaults for every flag it does not take."""
    defaults = vars(build_parser().parse_args(["train", str(args.data_folder)]))
    return run_train(argparse.Namespace(**{**defaults, **vars(args), "attack": True, "command": "attack"}))


def _adversarial_training(
    args: argparse.Namespace, val_set: Any, cfg: TrainConfig, device: torch.device, info: Any, pin: bool
) -> AdversarialTraining | None:
    """`--adv-train`: the perturbation, PGD validation on the first --adv-val-images val images, the FGSM-RS monitor."""
    if args.adv_train is None:
        return None
    from impl.adversarial import AdvTrainConfig, adversarial_training_on

    try:
        adv_cfg = AdvTrainConfig(args.adv_train, args.adv_eps, args.adv_alpha, args.adv_steps, amp=args.amp)
    except ValueError as exc:
        raise UsageError(name_flags(str(exc))) from exc
    return adversarial_training_on(
        adv_cfg, val_set, device, val_images=args.adv_val_images, batch_size=cfg.val_batch_size, workers=cfg.workers,
        info=info, pin_memory=pin,
    )  # fmt: skip


def _progress_logging(enabled: bool) -> Any:
    """Route log lines through tqdm while bars are shown, so they do not tear the bar."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    # only our logger: by default tqdm redirects the root logger, i.e. adds a handler there that prints every line a
    # second time (on stderr) after our own stdout handler has printed it
    return logging_redirect_tqdm(loggers=[logging.getLogger("impl")])


def run_evaluate(
    args: argparse.Namespace, model: nn.Module, val_loader: Any, device: torch.device, run_dir: Path
) -> int:
    """`-e`: the course's evaluation, logits averaged with the horizontally flipped image."""
    from impl.train import evaluate

    log.info("Testing the model ...")
    metrics = evaluate(model, val_loader, device=device, flip=True, amp=args.amp, print_freq=args.print_freq)
    if args.vis:
        from torch.utils.tensorboard import SummaryWriter

        from impl.viz import log_image_grids

        with SummaryWriter(str(run_dir)) as writer:
            log_image_grids(writer, 0, next(iter(val_loader))[0])
        log.info("wrote Image/Image to TensorBoard in %s", run_dir)
    print(f"val top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}")
    return 0


def run_attack(args: argparse.Namespace, model: nn.Module, val_loader: Any, device: torch.device, run_dir: Path) -> int:
    """`-a`: clean vs adversarial top-1/top-5 over val (course mode by default), the sanity report and figures.

    Writes `<run>/attack.md` (the table and checks) and `<run>/attack/attack_<i>.png` (a later attack of the same
    run: `attack-2.md` and `attack-2/`, and so on, never over an earlier one); with `-v` the TensorBoard grids
    `Image/Org_Image` and `Image/Adv_Image`. A failed sanity check is printed as a warning (and recorded in attack.md).
    """
    from impl.robustness import robustness_report
    from impl.train import dist_info

    if dist_info().world_size > 1:
        raise UsageError("-a/--attack runs in one process: start it without torchrun")
    try:
        report, main, written = robustness_report(
            model, val_loader, device, run_dir, mode=args.attack_mode, eps=args.attack_eps, alpha=args.attack_alpha,
            steps=args.attack_steps, early_stop=args.attack_early_stop, sweep=args.attack_sweep,
            max_batches=args.attack_batches, figures=args.attack_figures, vis=args.vis, amp=args.amp,
            progress=args.progress,
        )  # fmt: skip
    except ValueError as exc:  # the attack's settings (AttackSpec: eps ...) or the data
        raise UsageError(name_flags(_one_line(exc))) from exc
    print(report.to_markdown())
    result = report.result(main)
    print(f"clean val top-1 {report.clean_top1:.2f}%  top-5 {report.clean_top5:.2f}%")
    print(f"adversarial val top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  ({main}, {args.attack_mode} mode)")
    for check in report.failed:
        print(f"WARNING: sanity check failed: {check.name}: {check.detail}", file=sys.stderr)
    print(f"report: {written}")
    return 0


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
    from impl.demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="the main job: synthetic data (unless --data), SimpleNet, evaluation, report",
        description="Makes the synthetic dataset if absent (or uses --data), trains SimpleNet for a "
        "few epochs, evaluates the best checkpoint with flip averaging and writes report.md with its "
        "curves into the run folder.",
    )
    p.add_argument(
        "--data", type=Path, default=d.data, metavar="DIR", help="a real MiniPlaces root (default: synthetic)"
    )
    p.add_argument(
        "--synth-root",
        type=Path,
        default=d.synth_root,
        metavar="DIR",
        help=f"where the synthetic set lives or is made (default: {d.synth_root})",
    )
    p.add_argument("--model", choices=MODELS, default=d.model)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("-b", "--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("-j", "--workers", type=int, default=d.workers)
    p.add_argument("--device", default=d.device, help="torch device (default: cuda if available)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out, metavar="DIR", help="parent of the run folder")
    p.add_argument(
        "--attack-images",
        type=int,
        default=d.attack_images,
        metavar="N",
        help="val images attacked (course-mode PGD-10) for the report's robustness section; 0 skips it "
        f"(default: {d.attack_images})",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """`miniplaces demo`: the flags as a DemoConfig, then impl.demo.run_demo."""
    from impl.data import DataError
    from impl.demo import DemoConfig, DemoTrainingFailed
    from impl.demo import run_demo as demo
    from impl.train import CheckpointError

    if args.attack_images < 0:
        raise UsageError(f"--attack-images must be >= 0 (0 skips the robustness section), got {args.attack_images}")
    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    try:
        report = demo(cfg)
    except DemoTrainingFailed as exc:  # the train step printed why
        return exc.status
    except (DataError, CheckpointError) as exc:  # what the demo's inputs raise; any other error is a bug
        raise UsageError(_one_line(exc)) from exc
    except OSError as exc:
        raise UsageError(os_error_line(exc)) from exc
    print(f"report: {report}")
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from impl.experiments import DEFAULT_OUT as REPRODUCE_OUT
    from impl.experiments import RAW_DIR

    p = sub.add_parser(
        "reproduce",
        help="rerun an experiment of the seed report (reduced: CPU minutes; full: the seed's configuration)",
        description="Run one experiment of the seed report (or `all`) and write its raw result under --out; with "
        f"--record into {RAW_DIR}, which `python -m impl.accuracy_report` turns into reports/accuracy.md.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="an experiment (see --list), or all")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--data", type=Path, default=None, metavar="DIR", help="MiniPlaces folder (default: see --list)")
    p.add_argument("--reduced", action="store_true", help="the reduced scale (class subset, few epochs, CPU)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--out", type=Path, default=REPRODUCE_OUT, metavar="DIR", help=f"run folders (default: {REPRODUCE_OUT})"
    )
    p.add_argument(
        "--record",
        action="store_true",
        help=f"also write the raw result into {RAW_DIR} (the committed table's source); refused unless the data "
        "holds the recipe's classes",
    )
    p.add_argument("-j", "--workers", type=int, default=2, help="data-loading processes (default: 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's; 1 is fastest on a busy CPU)",
    )
    p.add_argument(
        "--data-on-device",
        action="store_true",
        help="train from the decoded uint8 cache with the augmentation on batches on --device (impl.data.gpu; no -j "
        "workers): what makes the full programme fast on a GPU. Same distributions as the course transforms, not the "
        "same draws; recorded in the result (loader)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run_reproduce)


def run_reproduce(args: argparse.Namespace) -> int:
    from impl.data import DataError
    from impl.experiments import EXPERIMENTS, RAW_DIR, ExperimentError, default_data, describe, run_experiment
    from impl.train import CheckpointError, ConfigError, RunFolderBusy, TrainingDiverged

    scale = "reduced" if args.reduced else "full"
    if args.list:
        print(f"experiments ({scale} scale; data default: {default_data(scale) or 'MINIPLACES_ROOT (unset)'}):")
        for exp in EXPERIMENTS:
            print("  " + describe(exp, scale))
        return 0
    if args.name is None:
        raise UsageError("give an experiment NAME (or all), or --list")
    names = [e.name for e in EXPERIMENTS] if args.name == "all" else [args.name]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    raw_dir = RAW_DIR if args.record else args.out / "raw"
    workers = _cap_workers(args.workers)
    for name in names:
        try:
            result = run_experiment(
                name, args.data, args.reduced, device, args.out, raw_dir=raw_dir, workers=workers,
                threads=args.threads, progress=args.progress, data_on_device=args.data_on_device,
            )  # fmt: skip
        except (ExperimentError, ConfigError, DataError, CheckpointError, RunFolderBusy, UnknownModel) as exc:
            raise UsageError(f"{name}: {_reproduce_flags(name_flags(_one_line(exc)))}") from exc
        except OSError as exc:
            raise UsageError(f"{name}: {os_error_line(exc)}") from exc
        except TrainingDiverged as exc:
            print(f"miniplaces reproduce: {name}: training diverged: {exc}", file=sys.stderr)
            return 3
        shown = ", ".join(f"{k} {v:.2f}" for k, v in result["metrics"].items() if not math.isnan(v))
        print(f"{name} ({scale}, {result['wall_time_s']:.0f} s): {shown}")
    table = "" if args.record else f" --raw {raw_dir} --out {args.out / 'accuracy.md'}"
    print(f"raw results in {raw_dir}; make the table with: {sys.executable} -m impl.accuracy_report{table}")
    return 0


def _reproduce_flags(message: str) -> str:
    """`threads must be ...` (run_experiment's argument) -> `--threads must be ...`; likewise data_on_device."""
    return re.sub(r"^data_on_device\b", "--data-on-device", re.sub(r"^threads\b", "--threads", message))
