"""The scale benchmark (issue 12, item 5): a Flower simulation of many virtual clients, memory and time per round.

``python -m benchmarks.scale`` runs ``fl-kd-sim`` (the real Flower simulation through ``flwr run``) as a child
process (:mod:`.run`), samples the memory of every process of that run from ``/proc`` (:mod:`.memory`), and writes
its section of ``BENCHMARKS_KD.md`` (:mod:`.report`): peak memory of the whole process tree, start-up and seconds
per round, with the command, the machine and its load.
"""
