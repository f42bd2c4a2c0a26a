"""Mutation score of the spec: mutmut over impl's course-interface code, then reports/verification.md.

    python -m tools.mutants [--commit REV] [--workdir DIR] [--max-children N] [--only PATTERN ...] [--out FILE]
    python -m tools.mutants --resume DIR [--only PATTERN ...]
    python -m tools.mutants --report-only DIR [DIR ...]

mutmut 3 mutates a copy under `mutants/` of the folder it runs in. It runs here on a snapshot of a commit
(`git archive`, into --workdir), never on the working tree: impl/ is edited by others while it runs, and the report
names the commit it measured. Scope: the functions in SCOPE (the course interface: conv Function and module with
the fast conv's GEMM and layout routing, attention, window helpers, block, DropPath, SimpleNet, SimpleViT, PGDAttack),
against the course-interface spec in [tool.mutmut] of pyproject.toml, one child by default, hypothesis derandomized.
With no arguments it is one complete pass on HEAD. A run folder keeps COMMIT and RUN.json (each pass: arguments,
children, start and end).

The report can be made from several run folders (e.g. part of SCOPE at one commit, the rest at a later one, and the
survivors a new test kills rerun by name at the commit that has the test): each function's row names the commit it
was measured at, and the report says whether the files a run measured are byte-identical at the newest run's commit
and at HEAD. Every survivor must be explained in SURVIVORS (equivalent, with the reason) or be killed by a test added
since, measured by a rerun; the report lists the rest as open.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "reports" / "verification.md"

# mutmut's names: impl.<module>.x_<function> and impl.<module>.xǁ<Class>ǁ<method>, then __mutmut_<n>.
SCOPE: tuple[str, ...] = (
    "impl.conv.x__out_size*",
    "impl.conv.x__unfold_forward*",
    "impl.conv.x__unfold_backward*",
    "impl.conv.x__fast_forward*",
    "impl.conv.x__fast_backward*",
    "impl.conv.x__forward*",
    "impl.conv.x__backward*",
    "impl.conv.xǁCustomConv2DFunctionǁ*",
    "impl.conv.xǁCustomConv2dǁ__init__*",
    "impl.conv.xǁCustomConv2dǁreset_parameters*",
    "impl.conv.xǁCustomConv2dǁforward*",
    "impl.conv.x_custom_conv2d*",
    # the fast Function and the routing its GEMMs and layouts go through (its kernels, ~1,300 mutants, are not)
    "impl.conv.xǁFastConv2DFunctionǁ*",
    "impl.conv.x_gemm*",
    "impl.conv.x__is_pointwise*",
    "impl.conv.x__layout_empty*",
    "impl.attention.x_window_partition*",
    "impl.attention.x_window_unpartition*",
    "impl.attention.xǁAttentionǁ*",
    "impl.attention.xǁDropPathǁ*",
    "impl.attention.xǁMLPǁ*",
    "impl.attention.xǁPatchEmbedǁ*",
    "impl.attention.xǁTransformerBlockǁ*",
    "impl.models.cnn.xǁSimpleNetǁ*",
    "impl.models.vit.xǁSimpleViTǁ*",
    "impl.attack.xǁPGDAttackǁ*",
    "impl.attack.x__input_grad*",
    "impl.attack.x__upcast*",
)

# mutmut's exit codes, grouped for the report: a timeout (the tests ran past 15x their CPU time) counts as detected.
DETECTED = {"killed", "timeout"}
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no tests", 5: "no tests", 36: "timeout", 24: "timeout"}
STATUS |= {-24: "timeout", 152: "timeout", 255: "timeout", None: "not checked", 2: "interrupted"}

# Survivors that no test can kill, keyed by function and the edit ("old line → new line", stripped), with the reason.
# A key names the edit, not mutmut's number, so it survives renumbering when the file changes elsewhere.
_SCALE = (
    "× C (classes) instead of × B: a positive factor leaves every gradient sign, hence the attack, unchanged; only "
    "float16 underflow of the per-example gradient (p - y)·C/B could tell them apart, at batches far beyond a test's "
    "(spec/attack/test_pgd_edges.py's float16 test kills the ÷ B mutant, (p - y)/B², at B = 4096)"
)
_PGD_LOSS = "attack.xǁPGDAttackǁperturb: return self.loss_fn(_upcast(logits), target) * logits.shape[0] → "
_SDPA = "SDPA's default scale is 1/√head_dim, which is what self.scale always is"
_IDENTITY = "DropPath(0.0) is the identity in every mode, as nn.Identity is"
_BLOCK_DROP = "attention.xǁTransformerBlockǁ__init__: self.drop_path = DropPath(drop_path) if drop_path > 0.0 else "
_BLOCK_DROP += "nn.Identity() → self.drop_path = DropPath(drop_path) if "
_CLAMP = "  # clamp(t, a, b) = min(max(t, a), b), bit for bit"
_LO = "attack.xǁPGDAttackǁperturb: lo = (clean - self.epsilon).clamp_(box_lo, box_hi)" + _CLAMP + " → "
_LO += "lo = (clean - self.epsilon).clamp_(box_lo, {})" + _CLAMP
_LO_WHY = (
    "lo is only the lower bound of the final clamp(x, lo, hi), and hi <= box_hi: where clean - ε lies above box_hi "
    "the bounds cross either way and clamp gives hi (min(max(x, lo), hi)), so every output is the same bits"
)
SURVIVORS: dict[str, str] = {
    _LO.format("None"): _LO_WHY,
    _LO.format(""): _LO_WHY,
    _PGD_LOSS + "return self.loss_fn(_upcast(logits), target) * logits.shape[1]": _SCALE,
    _BLOCK_DROP + "(drop_path > 0.0) or True else nn.Identity()": _IDENTITY,
    _BLOCK_DROP + "drop_path >= 0.0 else nn.Identity()": _IDENTITY,
    "conv.x__unfold_forward: out += bias.view(1, c_out, 1, 1) → out += bias.view(c_out, 1, 1)": "a (C_out, 1, 1) "
    "bias broadcasts over (N, C_out, H, W) exactly as (1, C_out, 1, 1) does",
    "models.vit.xǁSimpleViTǁforward: if self.pos_embed is not None and (x.ndim != 4 or x.shape[-2:] != (self.img_size, "
    "self.img_size)): → if self.pos_embed is not None and (x.ndim != 4 or x.shape[+2:] != (self.img_size, "
    "self.img_size)):": "+2 is 2, and for the 4-D input that reaches the comparison x.shape[2:] is x.shape[-2:]",
    "attention.xǁAttentionǁ__init__: head_dim = dim // num_heads → head_dim = dim / num_heads": "dim is checked "
    "to be a multiple of num_heads, so the quotient is exact and the scale head_dim**-0.5 is the same float",
    "attention.xǁAttentionǁforward: x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nH, L, hd) "
    "→ x = F.scaled_dot_product_attention(q, k, v, scale=None)  # (B, nH, L, hd)": _SDPA,
    "attention.xǁAttentionǁforward: x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nH, L, hd) "
    "→ x = F.scaled_dot_product_attention(q, k, v, )  # (B, nH, L, hd)": _SDPA,
    "attention.xǁAttentionǁforward: attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, nH, L, L) → attn = (q * "
    "self.scale) @ k.transpose(+2, -1)  # (B, nH, L, L)": "k is (B, nH, L, hd): dimension 2 is dimension -2",
}
# The fast conv's GEMM helper: which of two exact GEMMs runs is a speed question (bench/conv).
_ROUTE = "the same product by the other routine (torch.mm instead of oneDNN) for a 1-element operand: one multiply"
_EMPTY = (
    "oneDNN multiplies an empty batch or zero output channels to the same empty result; the one empty shape it "
    "refuses, K = 0, needs a weight with zero input channels, which check_conv_args refuses before any GEMM (as "
    "F.conv2d does)"
)
_ALGO = "with attr 'none' oneDNN's _linear_pointwise ignores the algorithm string (same bits for '', None or 'XXXX')"
_ONEDNN = (
    'return _ONEDNN_MATMUL(a, b, {bias}, "none", [], "") → return _ONEDNN_MATMUL(a, b, {bias}, "none", [], {algo})'
)
for _operand in ("a", "b"):
    SURVIVORS[f"conv.x_gemm: and {_operand}.numel() > 0 → and {_operand}.numel() >= 0"] = _EMPTY
    SURVIVORS[f"conv.x_gemm: and {_operand}.numel() > 0 → and {_operand}.numel() > 1"] = _ROUTE
for _algo in ("None", '"XXXX"'):
    SURVIVORS[f"conv.x_gemm: {_ONEDNN.format(bias='None if bias is None else bias.contiguous()', algo=_algo)}"] = _ALGO
SURVIVORS[
    "conv.x__fast_backward: if ctx.needs_input_grad[0] and ctx.stride == (1, 1): → if ctx.needs_input_grad[1] and "
    "ctx.stride == (1, 1):"
] = (
    "the same gradients by other routes: with only the weight's gradient asked it also computes a grad_input that "
    "autograd drops, with only the input's it takes the strided route (col2im), which is exact at stride 1 too; a cost "
    "(bench/conv), not a value"
)
# SimpleNet's layer table spells out stride=1 and padding=0, nn.Conv2d's (and CustomConv2d's) defaults.
_DEFAULTS = "stride 1 and padding 0 are nn.Conv2d's defaults"
for _c_in, _c_out, _k, _p in [(64, 64, 1, 0), (64, 64, 3, 1), (64, 256, 1, 0), (256, 128, 1, 0), (128, 128, 3, 1)] + [
    (128, 512, 1, 0)
]:
    _layer = f"conv_op({_c_in}, {_c_out}, kernel_size={_k}, stride=1, padding={_p}),"
    for _edit in [_layer.replace(" stride=1,", "")] + ([_layer.replace("padding=0", "")] if _p == 0 else []):
        SURVIVORS[f"models.cnn.xǁSimpleNetǁ__init__: {_layer} → {_edit}"] = _DEFAULTS


@dataclass(frozen=True)
class Result:
    name: str
    status: str
    diff: str = ""

    @property
    def function(self) -> str:
        return self.name.rsplit("__mutmut_", 1)[0]


@dataclass(frozen=True)
class Run:
    """One mutmut run folder: its snapshot's commit, how it was run (RUN.json) and its in-scope results."""

    workdir: Path
    commit: str
    info: dict
    results: tuple[Result, ...]
    hashes: dict[str, str]  # function (mutmut's name, as Result.function) → mutmut's hash of its source

    @property
    def label(self) -> str:
        return self.workdir.name

    def checked(self) -> list[Result]:
        return [r for r in self.results if r.status != "not checked"]

    def wall_s(self) -> float:
        return sum(p["finished"] - p["started"] for p in self.info["passes"] if p.get("finished"))

    def selection(self) -> tuple[list[str], list[str]]:
        """The snapshot's test selection and the pytest arguments of every mutant's run (its [tool.mutmut])."""
        conf = tomllib.loads((self.workdir / "pyproject.toml").read_text())["tool"]["mutmut"]
        return conf.get("pytest_add_cli_args_test_selection", []), conf.get("pytest_add_cli_args", [])


def in_scope(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SCOPE)


def expand(only: Sequence[str]) -> list[str]:
    """mutmut's arguments for `--only`: SCOPE entries, globs over them (`impl.conv.*`) or in-scope mutant names."""
    if not only:
        return list(SCOPE)
    names: list[str] = []
    for item in only:
        found = [p for p in SCOPE if p == item or fnmatch.fnmatchcase(p, item)] or ([item] if in_scope(item) else [])
        if not found:
            raise SystemExit(f"--only {item}: neither a SCOPE pattern, a glob over SCOPE nor a mutant in SCOPE")
        names += [n for n in found if n not in names]
    return names


def snapshot(commit: str, workdir: Path) -> str:
    """Extract the tracked files of `commit` into `workdir`; return the full commit hash."""
    sha = _git("rev-parse", commit)
    archive = subprocess.run(["git", "archive", sha], cwd=REPO, check=True, capture_output=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(workdir, filter="data")
    return sha


def run_mutmut(workdir: Path, only: Sequence[str] = (), max_children: int = 1) -> int:
    """mutmut on the snapshot in `workdir`; a folder with an earlier, stopped run resumes with the mutants it has not
    checked (mutmut reruns every mutant a pattern names). `only`: see expand. Each pass is logged in RUN.json."""
    patterns = expand(only)
    if (workdir / "mutants").is_dir():
        names = [r.name for r in collect(workdir, with_diffs=False) if r.status == "not checked"]
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    else:
        names = patterns
    if not names:
        return 0
    info = _info(workdir)
    info["passes"].append({"only": list(only), "max_children": max_children, "started": time.time()})
    _save_info(workdir, info)
    # One thread per test process: on a shared CPU it is several times faster than torch's default here.
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutmut", "PYTEST_ADDOPTS": "-p tools.mutmut_plugin"}
    env |= {"OMP_NUM_THREADS": "1", "CI": "1"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names]
    code = subprocess.run(cmd, cwd=workdir, env=env).returncode
    info["passes"][-1] |= {"finished": time.time(), "exit_code": code}
    _save_info(workdir, info)
    return code


def _info(workdir: Path) -> dict:
    """RUN.json of a run folder. A folder from before RUN.json existed gets one pass of one child (the only count the
    tool had then), its arguments not recorded, timed by its files: from the COMMIT file's mtime (the snapshot) to the
    newest .meta's (mutmut's last save)."""
    path = workdir / "RUN.json"
    if path.exists():
        return json.loads(path.read_text())
    metas = list((workdir / "mutants").rglob("*.py.meta"))
    passes = []
    if metas:
        started = (workdir / "COMMIT").stat().st_mtime
        passes.append(
            {"only": None, "max_children": 1, "started": started, "finished": max(m.stat().st_mtime for m in metas)}
        )
    return {"passes": passes, "timed_by": "file times" if passes else "RUN.json"}


def _save_info(workdir: Path, info: dict) -> None:
    info.setdefault("timed_by", "RUN.json")
    (workdir / "RUN.json").write_text(json.dumps(info, indent=1) + "\n")


def collect(workdir: Path, with_diffs: bool = True) -> list[Result]:
    """The in-scope mutants of the run in `workdir` with their status; survivors with their diff."""
    results = []
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in sorted(codes.items()):
            if in_scope(name):
                results.append(Result(name, STATUS.get(code, "suspicious")))
    if not with_diffs:
        return results
    return [r if r.status != "survived" else Result(r.name, r.status, _diff(workdir, r.name)) for r in results]


def load_run(workdir: Path) -> Run:
    hashes = {}
    for meta in (workdir / "mutants").rglob("*.py.meta"):
        module = ".".join(meta.relative_to(workdir / "mutants").with_suffix("").with_suffix("").parts)
        for function, digest in json.loads(meta.read_text())["hash_by_function_name"].items():
            hashes[f"{module}.{function}"] = digest
    commit = (workdir / "COMMIT").read_text().strip()
    return Run(workdir, commit, _info(workdir), tuple(collect(workdir)), hashes)


def _diff(workdir: Path, name: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, capture_output=True, text=True)
    return "\n".join(line for line in shown.stdout.splitlines()[1:] if line.strip())


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def _blob(commit: str, path: str) -> str:
    found = subprocess.run(["git", "rev-parse", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else "(missing)"


def _file_of(function: str) -> str:
    """impl.models.vit.xǁSimpleViTǁ__init__ → impl/models/vit.py"""
    return "/".join(function.rsplit(".", 1)[0].split(".")) + ".py"


@dataclass(frozen=True)
class Measured:
    """A mutant's status in the merged report and the run that measured it."""

    result: Result
    run: Run
    earlier: tuple[tuple[Run, str], ...] = ()  # (run, status) of earlier runs that checked the same mutant


def merge(runs: Sequence[Run]) -> list[Measured]:
    """Each function's mutants as the latest run (in `runs` order) that checked any of them has them; each mutant's
    status from the latest run that checked it while the function's source had that same hash. A function that changed
    since an earlier run keeps none of that run's statuses (they are of other mutants)."""
    merged = []
    functions = sorted({r.function for run in runs for r in run.results})
    for function in functions:
        owners = [run for run in runs if any(r.function == function for r in run.checked())]
        if not owners:
            base = runs[-1]
            merged += [Measured(r, base) for r in base.results if r.function == function]
            continue
        base = owners[-1]
        same = [run for run in owners if run.hashes.get(function) == base.hashes.get(function)]
        by_name: dict[str, list[tuple[Run, Result]]] = {}
        for run in same:
            for r in run.checked():
                if r.function == function:
                    by_name.setdefault(r.name, []).append((run, r))
        for r in base.results:
            if r.function != function:
                continue
            history = by_name.get(r.name, [])
            if not history:
                merged.append(Measured(r, base))
                continue
            run, last = history[-1]
            merged.append(Measured(last, run, tuple((h_run, h.status) for h_run, h in history[:-1])))
    return merged


def edit_key(result: Result) -> str:
    """'function: old → new' from the survivor's diff (the first removed and added lines, stripped)."""
    removed = [line[1:].strip() for line in result.diff.splitlines() if line.startswith("-") and line[1:2] != "-"]
    added = [line[1:].strip() for line in result.diff.splitlines() if line.startswith("+") and line[1:2] != "+"]
    short = re.sub(r"^impl\.", "", result.function)
    return f"{short}: {' / '.join(removed)} → {' / '.join(added)}"


def _ancestors(commit: str) -> int:
    return int(_git("rev-list", "--count", commit))


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _runs_table(runs: Sequence[Run], used: Counter) -> list[str]:
    lines = [
        "| run | commit | mutmut arguments | children | mutants checked (in the score) | wall | per mutant |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for run in runs:
        passes = run.info["passes"]
        only = sorted({p for pass_ in passes for p in pass_["only"] or ()})
        named = [p for p in only if "__mutmut_" in p]
        scope = ", ".join(
            [f"`{p}`" for p in only if p not in named] + ([f"{len(named)} mutants by name"] if named else [])
        )
        scope = scope or "all of SCOPE"
        if any(pass_["only"] is None for pass_ in passes):
            scope = "not recorded (a run from before RUN.json)"
        children = "/".join(sorted({str(p["max_children"]) for p in passes})) or "?"
        n = len(run.checked())
        wall = run.wall_s()
        when = (
            f"{_when(passes[0]['started'])}, {len(passes)} pass" + ("es" if len(passes) > 1 else "") if passes else ""
        )
        per = f"{wall / n:.1f} s" if n and wall else "?"
        lines.append(
            f"| `{run.label}` ({when}) | `{run.commit[:12]}` | {scope} | {children} | {n} ({used[run.label]}) | "
            f"{wall / 60:.0f} min | {per} |"
        )
    return lines


def _selection_lines(runs: Sequence[Run]) -> list[str]:
    lines = []
    selections = {run.label: run.selection() for run in runs}
    distinct = {(tuple(a), tuple(b)) for a, b in selections.values()}
    for label, (paths, args) in selections.items():
        if len(distinct) == 1 and lines:
            break
        who = "every run" if len(distinct) == 1 else f"`{label}`"
        lines.append(
            f"- Test selection of {who}: " + ", ".join(f"`{p}`" for p in paths) + "; pytest arguments "
            f"`{' '.join(args)}`. The spec files are those of the run's commit."
        )
    return lines


def _identity_lines(runs: Sequence[Run], measured: Sequence[Measured]) -> list[str]:
    """Whether the files each run measured are byte-identical at the newest run's commit and at HEAD."""
    newest = max(runs, key=lambda run: _ancestors(run.commit))
    head = _git("rev-parse", "HEAD")
    lines = []
    for run in runs:
        mine = [m for m in measured if m.run is run and m.result.status != "not checked"]
        files = sorted({_file_of(m.result.function) for m in mine})
        if not files:
            continue
        for other, what in ((newest, "the newest run's commit"), (None, "HEAD when this report was written")):
            target = other.commit if other else head
            if target == run.commit:
                continue
            differ = [f for f in files if _blob(run.commit, f) != _blob(target, f)]
            where = f"{what} `{target[:12]}`"
            if not differ:
                lines.append(f"- `{run.label}` measured {', '.join(f'`{f}`' for f in files)}: identical at {where}.")
                continue
            changed = ""
            if other is not None:
                functions = sorted({m.result.function for m in mine})
                moved = [f for f in functions if run.hashes.get(f) != other.hashes.get(f)]
                changed = f" (functions whose mutants changed: {', '.join(f'`{f}`' for f in moved) or 'none'})"
            lines.append(
                f"- `{run.label}` measured {', '.join(f'`{f}`' for f in files)}: **{', '.join(differ)} differ** at "
                f"{where}{changed}."
            )
    return lines or ["- one commit: nothing to compare."]


def render(runs: Sequence[Run], note: str = "") -> str:
    measured = merge(runs)
    results = [m.result for m in measured]
    used = Counter(m.run.label for m in measured if m.result.status != "not checked")
    counts = Counter(r.status for r in results)
    tested = sum(n for s, n in counts.items() if s in DETECTED | {"survived"})
    detected = sum(counts[s] for s in DETECTED)
    explained = [r for r in results if r.status == "survived" and edit_key(r) in SURVIVORS]
    open_ = [r for r in results if r.status == "survived" and edit_key(r) not in SURVIVORS]
    score = 100 * detected / tested if tested else 0.0
    adjusted = 100 * detected / (tested - len(explained)) if tested > len(explained) else 0.0
    commits = [c[:12] for c in sorted({run.commit for run in runs}, key=_ancestors)]
    how = (
        f"one mutmut run at commit `{commits[0]}`"
        if len(runs) == 1
        else f"{len(runs)} mutmut runs at {len(commits)} commit(s), oldest first "
        f"({', '.join(f'`{c}`' for c in commits)}): each function's mutants are those of the latest run that "
        "checked it, each mutant's status that of the latest run that checked it while the function's source was the "
        "same (mutmut's hash of it)"
    )
    lines = [
        "<!-- generated by `nox -s mutants` (tools/mutants.py) — do not edit -->",
        "# Mutation score of the spec",
        "",
        f"mutmut {_mutmut_version()} over impl's course-interface code, against the course-interface spec "
        f"(`[tool.mutmut]` in pyproject.toml), hypothesis derandomized, OMP_NUM_THREADS=1; made from {how}. Scope: "
        + ", ".join(f"`{p.rstrip('*')}`" for p in SCOPE)
        + ".",
        *(["", note] if note else []),
        "",
        *_runs_table(runs, used),
        "",
        "Wall time is of the whole run (mutmut's test-mapping pass included) on a 2-core machine shared with other "
        "work, so the time per mutant is an upper bound of an idle machine's.",
        "",
        *_selection_lines(runs),
        "",
        "Measured files:",
        "",
        *_identity_lines(runs, measured),
        "",
        f"**Score: {detected} of {tested} mutants detected ({score:.1f} %); {adjusted:.1f} % of the non-equivalent "
        f"ones** ({len(explained)} survivors are equivalent, {len(open_)} survivors unexplained).",
        "",
        "| status | mutants |",
        "|---|---:|",
        *(f"| {status} | {n} |" for status, n in sorted(counts.items())),
        "",
        "A timeout (the mutant made the tests run past 15x their CPU time) counts as detected, as mutmut does. "
        '"not checked" mutants were run by none of the runs (outside their arguments, or not reached) and are not '
        "in the score.",
        "",
        "## Per function",
        "",
        "| function | measured at | detected | survived | not checked |",
        "|---|---|---:|---:|---:|",
    ]
    for function in sorted({r.function for r in results}):
        mine = [m for m in measured if m.result.function == function]
        row = Counter("detected" if m.result.status in DETECTED else m.result.status for m in mine)
        at = Counter(m.run.commit[:12] for m in mine if m.result.status != "not checked")
        where = ", ".join(f"`{c}`" + (f" ({n})" if len(at) > 1 else "") for c, n in sorted(at.items())) or "—"
        lines.append(f"| `{function}` | {where} | {row['detected']} | {row['survived']} | {row['not checked']} |")
    rerun = [m for m in measured if m.earlier]
    lines += ["", "## Mutants rerun by a later run", ""]
    lines += [
        f"- `{m.result.name}`: "
        + ", ".join(f"{status} in `{run.label}` (`{run.commit[:12]}`)" for run, status in m.earlier)
        + f", then **{m.result.status}** in `{m.run.label}` (`{m.run.commit[:12]}`)"
        for m in rerun
    ] or ["none"]
    lines += ["", "## Equivalent survivors", ""]
    lines += [f"- `{r.name}` — `{edit_key(r)}`: {SURVIVORS[edit_key(r)]}" for r in explained] or ["none"]
    lines += ["", "## Unexplained survivors", ""]
    for r in open_:
        lines += [f"### `{r.name}`", "", "```diff", r.diff, "```", ""]
    if not open_:
        lines.append("none")
    return "\n".join(lines) + "\n"


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--commit", default="HEAD", help="the commit to measure (default HEAD; uncommitted edits are not)"
    )
    parser.add_argument("--workdir", type=Path, help="where the snapshot goes (default: a new temporary folder)")
    parser.add_argument(
        "--report-only",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="only write the report of finished runs, oldest first (a later run's status of a mutant wins)",
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the stopped run in DIR (its snapshot)")
    parser.add_argument("--note", default="", help="a sentence for the report's header (how the run was made)")
    parser.add_argument(
        "--only", nargs="+", default=(), metavar="PATTERN", help="run only these SCOPE patterns, globs or mutants"
    )
    parser.add_argument("--max-children", type=int, default=1, help="mutmut's parallel test processes (default 1)")
    parser.add_argument("--out", type=Path, default=REPORT, help=f"the report (default {REPORT.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.max_children < 1:
        parser.error(f"--max-children must be >= 1, got {args.max_children}")
    expand(args.only)  # a pattern outside SCOPE stops here, before any snapshot is made
    if args.report_only:
        workdirs = args.report_only
    elif args.resume:
        workdirs = [args.resume]
        run_mutmut(args.resume, args.only, args.max_children)
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="miniplaces-mutants-"))
        commit = snapshot(args.commit, workdir)
        (workdir / "COMMIT").write_text(commit + "\n")
        _save_info(workdir, {"passes": []})
        print(f"snapshot of {commit[:12]} in {workdir}; mutmut runs there")
        run_mutmut(workdir, args.only, args.max_children)
        workdirs = [workdir]
    missing = [str(d) for d in workdirs if not (d / "COMMIT").exists()]
    if missing:
        parser.error(f"not a run folder (no COMMIT file): {', '.join(missing)}")
    args.out.write_text(render([load_run(d) for d in workdirs], args.note))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
