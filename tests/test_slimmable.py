"""JCW's weight-sharing supernet (issue #13): a sampled candidate's masked forward is its pruned network's, sliced-off
weights get no gradient and come back unchanged, the CNS phase ignores densities, and the proxy loss ranks a
trained candidate above a crippled one."""

from __future__ import annotations

import numpy as np
import torch
from tests.test_train import cfg_, loaders, new_model

from prunekit.search.encoding import DensityGenes, GeneEncoding, WidthGenes
from prunekit.space import ChannelSpace, apply
from prunekit.supernets.slimmable import SupernetCallback, channels_only, proxy_losses
from prunekit.train import Callback, fit

SHAPE = (1, 3, 8, 8)


def _setup(seed=0):
    model = new_model(seed, width=16)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    enc = GeneEncoding.build(
        space,
        widths=WidthGenes.jcw(
            bounds={"all": (0.3, 1.0)}
        ),  # the net's one group is also "first" (JCW: >= 0.8)
        densities=DensityGenes.jcw(bounds={"all": (0.3, 1.0)}),
    )
    return model, space, enc


class Probe(Callback):
    """Runs after the supernet's on_batch_begin: records the masked forward against the pruned network's."""

    masked_out = None

    def on_batch_begin(self, state, batch):
        x = batch[0]
        model = state.model
        was = model.training
        model.eval()
        with torch.no_grad():
            masked = model(x)
        model.train(was)
        self.masked_out = masked
        return None


def test_masked_step_is_the_pruned_network_and_sliced_weights_get_no_gradient():
    model, space, enc = _setup()
    plan = enc.decode(enc.bounds.low)
    assert plan.groups and any(lc.density for lc in plan.layers.values())  # a real cut: channels and blocks
    sup = SupernetCallback(space, [plan], sparse=True)
    probe = Probe()
    train, _ = loaders(n_train=32, bs=32)
    x, _y = next(iter(train))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    sub = apply(model, plan, space).eval()  # the candidate's network from the weights before the step
    with torch.no_grad():
        want = sub(x)
    # lr with no momentum / weight decay: a weight without gradient must come back bit-identical
    fit(model, train, cfg_(epochs=1, momentum=0.0, weight_decay=0.0), callbacks=[sup, probe])
    torch.testing.assert_close(probe.masked_out, want, rtol=1e-5, atol=1e-5)
    from prunekit.space.realise import build_masks

    masks = build_masks(model, plan, space)  # (block masks from the new weights: use the channel part only)
    conv_keep = build_masks(model, channels_only(plan), space).params["conv.weight"]
    w0, w1 = before["conv.weight"], model.conv.weight.detach()
    assert torch.equal(w1[~conv_keep], w0[~conv_keep])  # sliced-off output channels untouched
    assert not torch.equal(w1[conv_keep], w0[conv_keep])  # the candidate trained
    assert masks.params  # something was masked at all


def test_cns_phase_trains_channels_only_and_the_pool_is_sampled():
    model, space, enc = _setup()
    rng = np.random.default_rng(1)
    plans = [enc.decode(g) for g in enc.bounds.random(rng, 3)]
    sup = SupernetCallback(space, plans, sparse=False, seed=3)
    assert all(not sup._sample().layers for _ in range(5))
    again = SupernetCallback(space, plans, sparse=False, seed=3)
    again.load_state_dict(sup.state_dict())
    assert sup._sample() == again._sample()
    drawn = SupernetCallback(space, lambda r: enc.decode(enc.bounds.random(r, 1)[0]), sparse=True)
    assert drawn._sample() is not None


def test_proxy_loss_ranks_the_full_candidate_above_a_crippled_one():
    torch.manual_seed(0)
    model, space, enc = _setup()
    train, val = loaders(bs=16)
    rng = np.random.default_rng(2)
    pool = [enc.decode(g) for g in enc.bounds.random(rng, 8)]
    full = enc.decode(enc.bounds.high)
    fit(model, train, cfg_(epochs=3), callbacks=[SupernetCallback(space, [*pool, full], sparse=True)])
    bn = [b for b, _ in zip(train, range(4), strict=False)]
    low = enc.decode(enc.bounds.low)
    losses = proxy_losses(model, space, [full, low], bn, val)
    assert np.isfinite(losses).all() and losses[0] < losses[1], losses
    before = {k: v.clone() for k, v in model.state_dict().items()}
    proxy_losses(model, space, [low], bn, val)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the supernet is untouched
