"""ADMM toward block-sparse weights (issue #13, JCW's training): the projection's exact density and block structure,
the residual falling on a tiny net, the hard masks, and an exact resume after a kill."""

from __future__ import annotations

import pytest
import torch
from tests.test_train import cfg_, loaders, new_model

from prunekit.space.plan import LayerChoice, Plan
from prunekit.space.sparsity import block_norms, n_kept_blocks
from prunekit.train import Callback, fit
from prunekit.train.admm import ADMMCallback, SparseTarget, admm_targets
from prunekit.train.masking import MaskCallback


def _blocks_nonzero(w: torch.Tensor, block=(4, 1)) -> int:
    return int((block_norms(w, block, p=2) > 0).sum())


def test_initial_projection_has_the_exact_density_and_block_structure():
    model = new_model(width=16)
    cb = ADMMCallback({"conv": SparseTarget(0.3)})

    class S:  # the only field on_train_begin reads
        pass

    st = S()
    st.model = model
    cb.on_train_begin(st)
    z, u, w = cb.Z["conv"], cb.U["conv"], model.conv.weight.detach()
    n_blocks = block_norms(w, (4, 1)).numel()  # 16/4 rows x 27 positions
    assert _blocks_nonzero(z) == n_kept_blocks(n_blocks, 0.3) == round(0.3 * n_blocks)
    # every 4x1 block is all zero or equal to W's block: a projection, not a shrinkage
    zb = z.reshape(4, 4, -1)
    wb = w.reshape(4, 4, -1)
    kept = zb.abs().sum(1) > 0
    assert torch.equal(zb.permute(0, 2, 1)[kept], wb.permute(0, 2, 1)[kept])
    assert torch.allclose(u, w - z)
    # the kept blocks are the largest in L2 norm
    norms = block_norms(w, (4, 1), p=2).flatten()
    assert norms[kept.flatten()].min() >= norms[~kept.flatten()].max()


def test_admm_residual_falls_and_the_hard_masks_are_exact():
    torch.manual_seed(0)
    model = new_model(width=16)
    train, val = loaders(bs=8)  # 32 steps per epoch: ADMM's W-update needs steps between the Z / U updates
    cb = ADMMCallback({"conv": SparseTarget(0.25), "fc": SparseTarget(0.5)}, rho=0.5)
    res = fit(model, train, cfg_(epochs=6, lr=0.05, weight_decay=0.0), val_loader=val, callbacks=[cb])
    resid = [h["admm_residual"] for h in res.history]
    assert resid[-1] < 0.5 * resid[0], resid  # measured 0.78 -> 0.28
    assert all(h["admm_rho"] == pytest.approx(0.5) for h in res.history)
    assert res.history[-1]["val_top1"] >= 0.9  # it still learns the task
    masks = cb.hard_masks(model)
    for name, d in (("conv", 0.25), ("fc", 0.5)):
        w = model.get_submodule(name).weight
        m = masks.params[f"{name}.weight"]
        n_blocks = block_norms(w, (4, 1)).numel()
        assert _blocks_nonzero(w * m) == n_kept_blocks(n_blocks, d)
    # a masked finetune keeps them exactly
    fit(model, train, cfg_(epochs=1), callbacks=[MaskCallback(masks)])
    assert _blocks_nonzero(model.conv.weight.detach()) == n_kept_blocks(
        block_norms(model.conv.weight).numel(), 0.25
    )


class Killed(Exception):
    pass


class Die(Callback):
    def __init__(self, at_epoch):
        self.at = at_epoch

    def on_epoch_begin(self, state):
        if state.epoch == self.at:
            raise Killed


def test_a_killed_admm_phase_resumes_exactly(tmp_path):
    train, _ = loaders()
    targets = {"conv": SparseTarget(0.25)}

    def run(callbacks, ckpt=None, resume=False):
        torch.manual_seed(0)
        model = new_model(width=16)
        cb = ADMMCallback(targets, rho=0.05, rho_growth=1.5)
        res = fit(model, train, cfg_(epochs=4), callbacks=[cb, *callbacks], ckpt_path=ckpt, resume=resume)
        return model, cb, res

    ref_model, ref_cb, _ = run([Die(None)])
    ck = tmp_path / "admm.pt"
    with pytest.raises(Killed):
        run([Die(2)], ck)
    model, cb, _ = run([Die(None)], ck, resume=True)
    assert torch.equal(model.conv.weight, ref_model.conv.weight)
    assert torch.equal(cb.Z["conv"], ref_cb.Z["conv"]) and torch.equal(cb.U["conv"], ref_cb.U["conv"])
    assert cb.rho == ref_cb.rho == pytest.approx(0.05 * 1.5**4)
    assert [h["layers"] for h in cb.history] == [h["layers"] for h in ref_cb.history]


def test_admm_targets_from_a_plan():
    plan = Plan(
        groups={},
        layers={
            "a": LayerChoice(density=0.3),
            "b": LayerChoice(density=1.0),
            "c": LayerChoice(conv_groups=2),
        },
    )
    assert admm_targets(plan) == {"a": SparseTarget(0.3, (4, 1))}
    with pytest.raises(ValueError):
        ADMMCallback({}, rho=0.0)
