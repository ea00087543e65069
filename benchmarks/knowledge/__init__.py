"""The knowledge benchmark (issue 9): does selective distillation move the clients' private knowledge into a large
server model and back, on Fashion-MNIST, against every peer and the baselines?

``python -m benchmarks.knowledge`` runs a fixed grid of jobs (:mod:`.grid`) two at a time, one run folder each
(:mod:`.run`), resuming from whatever already finished, and writes its section of ``BENCHMARKS_KD.md``
(:mod:`.report`, verdicts in :mod:`.verdicts`).
"""
