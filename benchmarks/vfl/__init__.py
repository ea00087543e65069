"""Vertical-FL label-protection benchmark: every defence against every label-inference attack, over seeds.

Defences and attacks are those of ``fl_kd.vfl``; the scoring follows VFLAIR (Zou et al., "VFLAIR: A Research
Library and Benchmark for Vertical Federated Learning", ICLR 2024): main-task performance MP, attack
performance AP, and the defence capability score DCS with MP* the undefended MP of the same dataset and seed.
The question it answers is the claim of CoAE (Zou, Liu et al., "Defending Batch-Level Label Inference and
Replacement Attacks in Vertical Federated Learning", IEEE TBD 2022): confused labels stop gradient-based label
inference at a small MP cost, while DP noise needs a larger MP loss for the same AP.

For each setting (dataset x top model), defence and seed it trains the split model *once*; every attack observes
that same training through the feature-party hooks. Run it with::

    python -m benchmarks.vfl --seeds 0 1 2 --shared-autoencoder-for 10   # full grid, ~30-45 min
    python -m benchmarks.vfl --quick                                      # end-to-end check, ~3 min

Modules, one job each:

- :mod:`.grid`: the settings, defences and attacks that are run;
- :mod:`.run`: one training with its attacks, and the CoAE autoencoders (every call into ``fl_kd.vfl`` is here);
- :mod:`.records`: the run folder (``records.jsonl``, the run's start) that lets a run resume;
- :mod:`.statistics`: records aggregated over seeds (MP, AP per attack, DCS) and the AP views compared;
- :mod:`.expectations`: verdicts on the CoAE claim;
- :mod:`.tables`, :mod:`.report` and :mod:`.plot`: the markdown tables, the report and the MP-vs-AP plot;
- :mod:`.__main__`: the command line.
"""
