"""Mutation score of the spec: mutmut over impl's course-interface code, then reports/verification.md.

    python -m tools.mutants [--commit REV] [--workdir DIR] [--report-only DIR]

mutmut 3 mutates a copy under `mutants/` of the folder it runs in. It runs here on a snapshot of a commit
(`git archive`, into --workdir), never on the working tree: impl/ is edited by others while it runs, and the report
names the commit it measured. Scope: the functions in SCOPE (the course interface: conv Function and module,
attention, window helpers, block, DropPath, SimpleNet, SimpleViT, PGDAttack), against the course-interface spec in
[tool.mutmut] of pyproject.toml, one child, hypothesis derandomized. Every survivor must be explained in
SURVIVORS (equivalent, with the reason) or be killed by a test added since; the report lists the rest as open.
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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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
_SCALE = "a positive factor on the loss leaves every gradient sign, hence the attack, unchanged (only fp16 underflow "
_SCALE += "on CUDA autocast, which the factor guards against, could tell them apart)"
_PGD_LOSS = "attack.xǁPGDAttackǁperturb: return self.loss_fn(_upcast(logits), target) * logits.shape[0] → "
_SDPA = "SDPA's default scale is 1/√head_dim, which is what self.scale always is"
_IDENTITY = "DropPath(0.0) is the identity in every mode, as nn.Identity is"
_BLOCK_DROP = "attention.xǁTransformerBlockǁ__init__: self.drop_path = DropPath(drop_path) if drop_path > 0.0 else "
_BLOCK_DROP += "nn.Identity() → self.drop_path = DropPath(drop_path) if "
SURVIVORS: dict[str, str] = {
    _PGD_LOSS + "return self.loss_fn(_upcast(logits), target) / logits.shape[0]": _SCALE,
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


def in_scope(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SCOPE)


def snapshot(commit: str, workdir: Path) -> str:
    """Extract the tracked files of `commit` into `workdir`; return the full commit hash."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=REPO, check=True, capture_output=True, text=True)
    archive = subprocess.run(["git", "archive", sha.stdout.strip()], cwd=REPO, check=True, capture_output=True)
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(workdir, filter="data")
    return sha.stdout.strip()


def run_mutmut(workdir: Path, only: Sequence[str] = ()) -> int:
    """mutmut on the snapshot in `workdir`; a folder with an earlier, stopped run resumes with the mutants it has not
    checked (mutmut reruns every mutant a pattern names). `only` narrows SCOPE to those patterns."""
    patterns = [p for p in SCOPE if not only or p in only]
    if (workdir / "mutants").is_dir():
        names = [r.name for r in collect(workdir, with_diffs=False) if r.status == "not checked"]
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    else:
        names = patterns
    if not names:
        return 0
    # One thread per test process: on a shared CPU it is several times faster than torch's default here.
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutmut", "PYTEST_ADDOPTS": "-p tools.mutmut_plugin"}
    env |= {"OMP_NUM_THREADS": "1", "CI": "1"}
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *names]
    return subprocess.run(cmd, cwd=workdir, env=env).returncode


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


def _diff(workdir: Path, name: str) -> str:
    shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=workdir, capture_output=True, text=True)
    return "\n".join(line for line in shown.stdout.splitlines()[1:] if line.strip())


def edit_key(result: Result) -> str:
    """'function: old → new' from the survivor's diff (the first removed and added lines, stripped)."""
    removed = [line[1:].strip() for line in result.diff.splitlines() if line.startswith("-") and line[1:2] != "-"]
    added = [line[1:].strip() for line in result.diff.splitlines() if line.startswith("+") and line[1:2] != "+"]
    short = re.sub(r"^impl\.", "", result.function)
    return f"{short}: {' / '.join(removed)} → {' / '.join(added)}"


def render(results: list[Result], commit: str, note: str = "") -> str:
    counts = Counter(r.status for r in results)
    tested = sum(n for s, n in counts.items() if s in DETECTED | {"survived"})
    detected = sum(counts[s] for s in DETECTED)
    explained = [r for r in results if r.status == "survived" and edit_key(r) in SURVIVORS]
    open_ = [r for r in results if r.status == "survived" and edit_key(r) not in SURVIVORS]
    score = 100 * detected / tested if tested else 0.0
    adjusted = 100 * detected / (tested - len(explained)) if tested > len(explained) else 0.0
    lines = [
        "<!-- generated by `nox -s mutants` (tools/mutants.py) — do not edit -->",
        "# Mutation score of the spec",
        "",
        f"mutmut {_mutmut_version()} over impl's course-interface code at commit `{commit[:12]}`, against the course-",
        "interface spec (`[tool.mutmut]` in pyproject.toml), one child, hypothesis derandomized. Scope: "
        + ", ".join(f"`{p.rstrip('*')}`" for p in SCOPE)
        + ".",
        *(["", note] if note else []),
        "",
        f"**Score: {detected} of {tested} mutants detected ({score:.1f} %); {adjusted:.1f} % of the non-equivalent "
        f"ones** ({len(explained)} survivors are equivalent, {len(open_)} survivors unexplained).",
        "",
        "| status | mutants |",
        "|---|---:|",
        *(f"| {status} | {n} |" for status, n in sorted(counts.items())),
        "",
        "A timeout (the mutant made the tests run past 15x their CPU time) counts as detected, as mutmut does. "
        '"not checked" mutants were not reached before the run stopped and are not in the score.',
        "",
        "## Per function",
        "",
        "| function | detected | survived | not checked |",
        "|---|---:|---:|---:|",
    ]
    for function in sorted({r.function for r in results}):
        mine = [r for r in results if r.function == function]
        row = Counter("detected" if r.status in DETECTED else r.status for r in mine)
        lines.append(f"| `{function}` | {row['detected']} | {row['survived']} | {row['not checked']} |")
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
        "--report-only", type=Path, metavar="DIR", help="only write the report of a finished run in DIR"
    )
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the stopped run in DIR (its snapshot)")
    parser.add_argument("--note", default="", help="a sentence for the report's header (how the run was made)")
    parser.add_argument("--only", nargs="+", default=(), metavar="PATTERN", help="run only these SCOPE patterns")
    args = parser.parse_args(argv)
    if args.report_only or args.resume:
        workdir = args.report_only or args.resume
        commit = (workdir / "COMMIT").read_text().strip()
        if args.resume:
            run_mutmut(workdir, args.only)
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="miniplaces-mutants-"))
        commit = snapshot(args.commit, workdir)
        (workdir / "COMMIT").write_text(commit + "\n")
        print(f"snapshot of {commit[:12]} in {workdir}; mutmut runs there")
        run_mutmut(workdir, args.only)
    REPORT.write_text(render(collect(workdir), commit, args.note))
    print(f"wrote {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
