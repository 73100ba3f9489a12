"""The studies behind the notebooks: run grids and analyses over finished runs.

- ``grids``: the ablation, sensitivity and compatibility grids as lists of run configurations;
- ``tuning``: the recorded equal-budget hyper-parameter search;
- ``gradient_snr``: the stage gradient's signal-to-noise ratio of an estimator, measured;
- ``sparsity``: branch groups under sparse rewards (closed forms and the census), the sparsity axis;
- ``levers``: the binary-reward levers searched per method;
- ``binary``: the binary-reward study (the baselines' search, the budget from the census, the study's folders);
- ``colour_mixing``: the mixed-colour objects of every model, regenerated from the runs.
"""

# the run grids, importable from the package as from the flat module ``b2lib.studies`` of earlier versions
from b2lib.studies.grids import *  # noqa: E402, F403
from b2lib.studies.grids import __all__  # noqa: E402, F401
