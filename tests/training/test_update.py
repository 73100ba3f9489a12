"""The update over stored transitions: micro-batches and the update size."""

import math

import pytest
import torch


def test_update_size():
    from b2lib.training.trainer import update_size

    before = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    after = [torch.tensor([3.0, 1.0]), torch.tensor([[4.0]])]
    out = update_size(before, after)
    assert out["update_norm"] == pytest.approx(1.0) and out["rel_update"] == pytest.approx(1.0 / 5.0)


@pytest.mark.parametrize(
    "n,steps,trained,batch,accum,chunk", [(7, 5, 5, 2, 2, 0), (8, 6, 3, 4, 1, 2), (5, 4, 4, 1, 3, 1)]
)
def test_micro_batches_visit_each_sample_once_with_its_own_step_order(n, steps, trained, batch, accum, chunk):
    from b2lib.training.trainer import micro_batches

    plan = micro_batches(n, steps, trained, batch, accum, chunk, torch.Generator().manual_seed(0))
    assert len(plan) == math.ceil(math.ceil(n / batch) / accum)  # optimizer steps
    assert all(1 <= len(step) <= accum for step in plan)
    rows = torch.cat([micro[0][0] for step in plan for micro in step])
    assert sorted(rows.tolist()) == list(range(n))  # every sample once per epoch
    width = trained if chunk == 0 else chunk
    for step in plan:
        for micro in step:
            assert all(torch.equal(r, micro[0][0]) for r, _ in micro)  # the chunks of one micro-batch share its rows
            cols = torch.cat([c for _, c in micro], dim=1)
            assert cols.shape == (len(micro[0][0]), trained) and all(c.shape[1] <= width for _, c in micro)
            assert all(len(set(row)) == trained and max(row) < steps for row in cols.tolist())  # distinct steps


def test_micro_batches_reproducible_under_a_seed():
    from b2lib.training.trainer import micro_batches

    a, b = (micro_batches(6, 4, 2, 2, 2, 0, torch.Generator().manual_seed(3)) for _ in range(2))
    flat = lambda plan: [(r.tolist(), c.tolist()) for s in plan for m in s for r, c in m]  # noqa: E731
    assert flat(a) == flat(b)
