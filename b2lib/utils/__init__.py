"""Low-level helpers every layer may use; nothing here imports torch or another b2lib subpackage.

- ``paths``: where notebooks write (``results/<name>/``, a throw-away folder for smoke runs), the repository root;
- ``rundir``: run folders that cannot be mislabelled or written twice (fingerprint, lock, atomic writes, full disks);
- ``tables``: the study tables' declared formats, written and read back checked;
- ``precision``: the compute dtype (fp32, or bf16 model forwards);
- ``progress``: a long run's progress as short lines.
"""
