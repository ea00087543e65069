"""Selective-KD benchmark: Flower simulation, in-process reference runner and baselines, side by side.

For each seed it runs the default Hydra config (``fl_kd.conf``, FedGEMS-like selective distillation, Cheng et al.,
2021, arXiv:2110.11027) on the same federation as (a) the Flower simulation, (b) the in-process reference runner,
which must give the same numbers, (c) the local-only baseline and (d) the transfer-only server. Run it with::

    python -m benchmarks.kd --seeds 0 1 2 --rounds 5

Modules, one job each:

- :mod:`.grid`: what is run (the composed config of one seed and backend);
- :mod:`.run`: run both runtimes and both baselines for one seed;
- :mod:`.statistics`: what a seed produced (:class:`~.statistics.SeedRun`) and numbers over seeds (final values,
  ``mean ± std``, runtime comparison);
- :mod:`.report` and :mod:`.expectations`: the markdown report and its verdicts;
- :mod:`.__main__`: the command line.
"""
