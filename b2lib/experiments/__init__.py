"""Experiments: from a run's configuration to its results folder.

- ``runconfig``: :class:`RunConfig`, one experiment's settings, validated as a whole;
- ``presets``: the scales (the embedded world, the paper's hub models, the smoke size) and the estimator recipes;
- ``setups``: named setups of the studies (the main job's ``MAIN``, the published recipe's ``PAPER``);
- ``experiment``: :func:`run_experiment`, train and evaluate every model of a run and write ``results/<run>/``;
- ``modeljobs``: one model's job (base evaluation, or one method x seed), run in-process or in worker processes;
- ``reevaluate``: a finished run's models evaluated on a split they were not evaluated on.

The command line is :mod:`b2lib.train`.
"""
