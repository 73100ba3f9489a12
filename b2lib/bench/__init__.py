"""Speed measurements of the sampler and the trainer, side by side in one process, kept out of the algorithm modules.

Each measurement times a callable ``repeats`` times after a warm-up and keeps min/median/max; ratios are formed from
the medians, or repeat by repeat for interleaved pairs. Everything runs on whatever pipeline it is given: the embedded
world on CPU, or the Stable Diffusion 1.4 architecture built from config (random weights, no download) on a GPU.

=================  ==========================================================================================
module             job
=================  ==========================================================================================
``timing``         timings, rates and ratios; UNet forward time by hooks; machine description
``sampling``       sampler vs pipeline, branch vs independent sampling, batched vs looped branches, time split
``training``       the update's UNet share, packed vs one-step-per-forward updates, in-process vs reloaded stages
``paper``          the SD-1.4 architecture from config: FLOPs, images/s, TFLOP/s against the GPU's peak
``dtype``          fp32 against bf16 compute, phase by phase (sampling, branches, tree, stages, evaluation)
``flow``           the flow policy's samplers against stock ``StableDiffusion3Pipeline``, same prompts and noise
``suite``          :func:`run_suite` (every measurement) and the tables notebook 05 shows
=================  ==========================================================================================

``benchmarks/speed.py`` is the command line; ``notebooks/05_performance.ipynb`` plots what it writes.
"""

from b2lib.bench.dtype import DTYPE_SIZES, bench_dtype, dtype_table
from b2lib.bench.flow import bench_flow_sampler_vs_pipeline
from b2lib.bench.paper import (
    PEAK_TFLOPS,
    bench_paper_arch,
    flops_per_image,
    optimize_for_device,
    paper_arch_pipeline,
    paper_flops,
    peak_for,
    unet_flops,
)
from b2lib.bench.sampling import (
    SamplingParts,
    bench_branch_loop,
    bench_branching,
    bench_sampler_vs_pipeline,
    bench_tree,
    bench_unet_share_sampling,
    branching_bound,
)
from b2lib.bench.suite import GOALS, SIZES, labels, run_suite, sampling_parts_table, summary_table
from b2lib.bench.timing import (
    Timing,
    UnetTimer,
    machine_info,
    paired_ratio,
    ratio_of_medians,
    save_json,
    spread,
    sync,
    time_it,
    time_pair,
)
from b2lib.bench.training import bench_stage_reload, bench_training_share, bench_update_packing

__all__ = [
    # timing
    "Timing",
    "time_it",
    "time_pair",
    "paired_ratio",
    "ratio_of_medians",
    "spread",
    "UnetTimer",
    "machine_info",
    "save_json",
    "sync",
    # sampling
    "bench_sampler_vs_pipeline",
    "SamplingParts",
    "branching_bound",
    "bench_branching",
    "bench_branch_loop",
    "bench_unet_share_sampling",
    "bench_tree",
    # the flow path
    "bench_flow_sampler_vs_pipeline",
    # training
    "bench_training_share",
    "bench_update_packing",
    "bench_stage_reload",
    # the SD-1.4 architecture
    "PEAK_TFLOPS",
    "peak_for",
    "paper_arch_pipeline",
    "optimize_for_device",
    "unet_flops",
    "flops_per_image",
    "paper_flops",
    "bench_paper_arch",
    # fp32 against bf16
    "DTYPE_SIZES",
    "bench_dtype",
    "dtype_table",
    # the suite
    "SIZES",
    "GOALS",
    "run_suite",
    "labels",
    "summary_table",
    "sampling_parts_table",
]
