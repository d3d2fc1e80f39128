from __future__ import annotations

import torch
from torch.profiler import record_function

from gdf_pyg.utils.profiling import count_host_syncs, step_region


def test_counts_reads_and_data_dependent_shapes_in_and_out_of_steps():
    x = torch.arange(6.0)
    with count_host_syncs() as count:
        float(x.sum())  # one read outside any step
        for _ in range(3):
            with step_region():
                x[x > 2]  # a boolean mask: nonzero
                int(x.max())  # a read
        with record_function("Optimizer.step#AdamW.step"):
            x.nonzero()  # the optimiser's own: excluded
        with record_function("enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"):
            float(x.mean())  # the loader's work: excluded
    assert count.steps == 3
    assert count.total == 7 and count.in_steps == 6
    assert count.by_op == {"aten::_local_scalar_dense": 4, "aten::nonzero": 3}
    assert count.in_steps_per_step == 2.0 and count.per_step == 7 / 3


def test_sites_name_the_frame_of_the_package():
    from gdf_pyg.nn.graph import knn_graph

    x = torch.randn(10, 3)
    with count_host_syncs(with_stack=True) as count:
        knn_graph(x, 2)  # the public builder checks its input: reads back
    assert count.total >= 1
    assert all("gdf_pyg" in site and "graph.py" in site for site in count.sites)


def test_no_ops_no_count():
    with count_host_syncs() as count:
        torch.ones(3) + 1
    assert count.total == 0 and count.steps == 0 and count.per_step == 0.0
