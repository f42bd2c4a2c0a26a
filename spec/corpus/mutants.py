"""The corpus's mutants: each one real student mistake (or a valid variant), a one-line edit of a correct corpus file.

A mutant is (name, graded part, base, file, old text, new text): `materialize` copies the base folder
(student_code.py and its sibling custom_blocks.py, the course layout) and applies the edit, so the harness loads a
real file. A mutant with expect="PASS" is no mistake but a valid variant, another correct implementation (its whole
card passes at the course tier); a mistake only some valid readings can make names such a variant as its base and is
applied on top of it. `python -m spec.corpus.mutants OUT` writes every mutant to OUT/<name>/ for running
`miniplaces verify` by hand. The verdicts are asserted in spec/test_corpus.py.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).parent
CORRECT = ("correct_a", "correct_b")  # two correct implementations that make different valid choices


@dataclass(frozen=True)
class Mutant:
    name: str
    part: str  # the report-card part that must FAIL (a valid variant: the part it edits; its whole card passes)
    base: str  # the correct folder it edits, or a valid variant's name: then it edits that variant's file
    file: str  # the edited file in that folder
    old: str  # occurs exactly once in the file
    new: str
    diagnosis: str = ""  # a phrase the part's diagnosis must contain, where the spec names this mistake
    fast: bool = False  # in the default run (one or two per part); all run under `nox -s corpus`
    expect: str = "FAIL"  # "WARN" for a choice the spec holds as advised only (see spec/CONTRACT.md); "PASS": valid


A, B, SC, CB = "correct_a", "correct_b", "student_code.py", "custom_blocks.py"
UNIFORM_START = "output = clean + torch.empty_like(clean).uniform_(-self.epsilon, self.epsilon)"

MUTANTS: tuple[Mutant, ...] = (
    # §3.1.1 forward: a view breaks ReLU(inplace=True); the bias dropped.
    Mutant("conv_returns_view_without_bias", "conv_forward", A, SC, "out = out.clone()", "out = out", fast=True),
    Mutant(
        "conv_returns_view_with_bias",
        "conv_forward",
        A,
        SC,
        "out = out + bias.view(1, -1, 1, 1)",
        "out += bias.view(1, -1, 1, 1)",
    ),
    Mutant(
        "conv_bias_ignored",
        "conv_forward",
        A,
        SC,
        "out = out + bias.view(1, -1, 1, 1)",
        "out = out.clone()",
        diagnosis="bias ignored",
    ),
    # §3.1.1 backward.
    Mutant(
        "conv_weight_grad_averaged",
        "conv_backward",
        A,
        SC,
        ".sum(0).view_as(weight)",
        ".mean(0).view_as(weight)",
        fast=True,
    ),
    Mutant(
        "conv_fold_wrong_stride",
        "conv_backward",
        A,
        SC,
        "grad_input = F.fold(dcols, ctx.input_hw, k, padding=ctx.padding, stride=ctx.stride)",
        "grad_input = F.fold(dcols, ctx.input_hw, k, padding=ctx.padding, stride=1)",
    ),
    Mutant(
        "conv_fold_wrong_padding",
        "conv_backward",
        A,
        SC,
        "grad_input = F.fold(dcols, ctx.input_hw, k, padding=ctx.padding, stride=ctx.stride)",
        "grad_input = F.fold(dcols, ctx.input_hw, k, padding=0, stride=ctx.stride)",
    ),
    Mutant(
        "conv_fold_no_crop",
        "conv_backward",
        B,
        SC,
        "grads[0] = dpadded[:, :, padding : hp - padding, padding : wp - padding].contiguous()",
        "grads[0] = dpadded[:, :, : hp - 2 * padding, : wp - 2 * padding].contiguous()",
    ),
    Mutant(
        "conv_bias_grad_averaged",
        "conv_backward",
        B,
        SC,
        "grads[2] = dy.sum((0, 2))",
        "grads[2] = dy.sum(2).mean(0)",
    ),
    # §3.1.2: SimpleNet with the subject's CustomConv2d must equal it with nn.Conv2d.
    Mutant(
        "conv_module_swaps_stride_and_padding",
        "simplenet",
        A,
        SC,
        "custom_conv2d(input, self.weight, self.bias, self.stride, self.padding)",
        "custom_conv2d(input, self.weight, self.bias, self.padding, self.stride)",
        fast=True,
    ),
    # §3.2.1 attention.
    Mutant(
        "attention_softmax_wrong_axis",
        "attention",
        A,
        SC,
        "attn.softmax(dim=-1)",
        "attn.softmax(dim=-2)",
        diagnosis="softmax",
        fast=True,
    ),
    Mutant(
        "attention_missing_scale",
        "attention",
        A,
        SC,
        "(q * self.scale) @ k.transpose(-2, -1)",
        "q @ k.transpose(-2, -1)",
        diagnosis="scale",
    ),
    Mutant(
        "attention_inverted_scale",
        "attention",
        A,
        SC,
        "(q * self.scale) @ k.transpose(-2, -1)",
        "(q / self.scale) @ k.transpose(-2, -1)",
        diagnosis="scale",
    ),
    Mutant(
        "attention_head_merge_order",
        "attention",
        A,
        SC,
        ".view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)",
        ".view(B, self.num_heads, H, W, -1).reshape(B, H, W, -1)",
        diagnosis="heads merged in the wrong order",
    ),
    Mutant(
        "attention_loop_scale_missing",
        "attention",
        B,
        SC,
        "k[..., cut].transpose(1, 2) * self.scale, dim=-1)",
        "k[..., cut].transpose(1, 2), dim=-1)",
        diagnosis="scale",
    ),
    # §3.2.1 transformer block and the course-given helpers it uses.
    Mutant(
        "window_unpartition_order",
        "transformer_block",
        A,
        CB,
        "x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)",
        "x = x.permute(0, 2, 1, 3, 4, 5).contiguous().view(B, Hp, Wp, -1)",
        fast=True,
    ),
    Mutant(
        "window_padding_not_cropped",
        "transformer_block",
        B,
        CB,
        "return x[:, :H, :W].contiguous()",
        "return x.contiguous()",
    ),
    Mutant(
        "drop_path_active_in_eval",
        "transformer_block",
        A,
        CB,
        "if drop_prob == 0.0 or not training:",
        "if drop_prob == 0.0:",
    ),
    Mutant("drop_path_not_rescaled", "transformer_block", A, CB, "return x.div(keep_prob) * mask", "return x * mask"),
    Mutant(
        "block_post_ln",
        "transformer_block",
        B,
        SC,
        "x = x + self.drop_path(self._attend(self.norm1(x)))",
        "x = self.norm1(x + self.drop_path(self._attend(x)))",
    ),
    # §3.2.2 SimpleViT.
    Mutant(
        "vit_non_linear_drop_path_rates",
        "simplevit",
        A,
        SC,
        "dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]",
        "dpr = [x.item() ** 2 for x in torch.linspace(0, drop_path_rate, depth)]",
    ),
    Mutant("vit_position_embedding_not_added", "simplevit", A, SC, "x = x + self.pos_embed", "x = x", fast=True),
    Mutant(
        "vit_norm_after_pooling",
        "simplevit",
        A,
        SC,
        "x = self.norm(x).mean(dim=(1, 2))",
        "x = self.norm(x.mean(dim=(1, 2)))",
        expect="WARN",  # timm's fc_norm does this: a valid head, so the spec holds the starter's order as advised
    ),
    Mutant(
        "vit_windows_every_block",
        "simplevit",
        B,
        SC,
        "window_size if i in window_block_indexes else 0,",
        "window_size,",
    ),
    # §3.3 PGD.
    Mutant(
        "pgd_ascends",
        "pgd",
        A,
        SC,
        "output = output.detach() - self.step_size * grad.sign()",
        "output = output.detach() + self.step_size * grad.sign()",
        diagnosis="ascend",
        fast=True,
    ),
    Mutant(
        "pgd_clamps_to_unit_box",
        "pgd",
        A,
        SC,
        "output = torch.min(torch.max(output, lo), hi)",
        "output = output.clamp(0, 1)",
    ),
    Mutant(
        "pgd_no_eps_projection",
        "pgd",
        A,
        SC,
        "output = torch.min(torch.max(output, clean - self.epsilon), clean + self.epsilon)",
        "pass",
    ),
    Mutant(
        "pgd_argmax_target",
        "pgd",
        A,
        SC,
        "target = model(clean).argmin(dim=1)",
        "target = model(clean).argmax(dim=1)",
        diagnosis="argmax",
    ),
    Mutant("pgd_leaves_model_in_train_mode", "pgd", A, SC, "m.training = training", "m.training = True"),
    # Valid: PGD under l∞ as in the readme's [9] (Madry et al.) starts uniformly at random inside the ε-ball; on
    # correct_a (target fixed from the clean input, box clamp, the bonus too) and on correct_b (per-step target).
    Mutant("pgd_random_start", "pgd", A, SC, "output = clean.clone()", UNIFORM_START, fast=True, expect="PASS"),
    Mutant("pgd_random_start_per_step_target", "pgd", B, SC, "output = clean.clone()", UNIFORM_START, expect="PASS"),
    # Attacking with the model in train mode (BN batch statistics, dropout): the spec holds eval mode as advised (the
    # readme does not ask for it), so the batch test must not turn BN's coupling of the batch into a course failure.
    Mutant("pgd_attacks_in_train_mode", "pgd", A, SC, "    modules.eval()", "    modules.train()", expect="WARN"),
    # The ε-ball as a rescale by the batch's largest |δ| (the l∞ twin of a batch-wide l2 norm): every example stays
    # in its ball, but how far it moves depends on the others. From the deterministic start all |δ| are equal after
    # one step, so the mistake shows only under a random start. Caught by the batch test's neighbour check over its
    # five seeds and both halves; one seed alone often misses (the batch max often survives the swap: 11 of seeds 1-40).
    Mutant(
        "pgd_batch_scaled_projection",
        "pgd",
        "pgd_random_start",
        SC,
        "output = torch.min(torch.max(output, clean - self.epsilon), clean + self.epsilon)",
        "output = clean + (output - clean) * (self.epsilon / ((output - clean).abs().max() + 1e-12)).clamp(max=1)",
        diagnosis="depends on the others in its batch",
    ),
    # main.py's -a path only evaluates after perturb; the bonus trains the same model, so that row catches it.
    Mutant("pgd_leaves_parameters_frozen", "bonus", A, SC, "p.requires_grad_(True)", "p.requires_grad_(False)"),
    Mutant(
        "pgd_leaves_parameter_grads",
        "pgd",
        B,
        SC,
        "(grad,) = torch.autograd.grad(loss, output)",
        "loss.backward(); grad = output.grad",
        expect="WARN",  # main.py's -a path only evaluates after perturb: advised for PGD (course-tier for the bonus)
    ),
    # §3.3 bonus: adversarial training inside SimpleNet's forward.
    Mutant(
        "bonus_forward_switches_to_eval",
        "bonus",
        A,
        SC,
        "x = self.attack.perturb(super().forward, x, modules=self)",
        "x = self.attack.perturb(super().forward, x, modules=self.eval())",
        fast=True,
    ),
    Mutant("bonus_attacks_in_eval_mode", "bonus", A, SC, "if self.training:", "if True:"),
)


BY_NAME = {m.name: m for m in MUTANTS}
VARIANTS = tuple(m for m in MUTANTS if m.expect == "PASS")  # valid variants: more correct implementations


def edits(mutant: Mutant) -> tuple[Mutant, ...]:
    """The edits that make `mutant` from a correct folder, in order: its base variant's first, if it has one."""
    if mutant.base in CORRECT:
        return (mutant,)
    base = BY_NAME.get(mutant.base)
    if base is None or base.expect != "PASS":
        raise ValueError(f"mutant {mutant.name}: base {mutant.base!r} is neither a folder of {CORRECT} nor a variant")
    return (*edits(base), mutant)


def materialize(mutant: Mutant, dest: Path) -> Path:
    """Write the mutant's folder to dest/<name>/ and return the path of its student_code.py."""
    chain = edits(mutant)
    folder = dest / mutant.name
    shutil.copytree(CORPUS / chain[0].base, folder, ignore=shutil.ignore_patterns("__pycache__"))
    for edit in chain:
        target = folder / edit.file
        text = target.read_text()
        if text.count(edit.old) != 1:
            raise ValueError(
                f"mutant {mutant.name}: {edit.old!r} occurs {text.count(edit.old)} times in "
                f"{edit.base}/{edit.file}, not once"
            )
        target.write_text(text.replace(edit.old, edit.new))
    return folder / "student_code.py"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m spec.corpus.mutants OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for mutant in MUTANTS:
        print(materialize(mutant, out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
