"""How a deployed federation copes with nodes that do not answer: timeouts, a quorum, resuming after a crash.

In simulation every client answers. In a deployment a SuperNode can die mid-round, so the server waits at most
``round_timeout_s`` for each phase's replies, goes on with those that came, and counts the round only if at least
``min_clients`` clients replied to its train phase; otherwise the run stops after its last complete round, which is
on disk (:mod:`fl_kd.kd.progress`) and can be resumed. The settings travel to the ServerApp as run config scalars
under :data:`RUN_CONFIG_KEYS`; a run config without them (simulation) gets the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fl_kd.config import ConfigError

MIN_CLIENTS_KEY, ROUND_TIMEOUT_KEY, RESUME_KEY = "min-clients", "round-timeout", "resume"
RUN_CONFIG_KEYS = (MIN_CLIENTS_KEY, ROUND_TIMEOUT_KEY, RESUME_KEY)


class QuorumError(RuntimeError):
    """Fewer clients answered a round than the policy's minimum; the run stops after its last complete round."""


@dataclass(frozen=True)
class RoundPolicy:
    """The server's patience with its clients.

    Attributes
    ----------
    min_clients : int (default: 1)
        Fewest clients whose reply to the train phase must arrive for the round to count (an answer, or the error
        of a ClientApp that raised: its node is alive, and a client that raises never stops the run); at most the
        number of clients sampled per round.
    round_timeout_s : float (default: 3600.0)
        Seconds the server waits for the replies of one phase (discovery, train, evaluate); a node that has not
        answered by then counts as missing for the phase, and gets no evaluate message in that round. The default
        is Flower's own (``Strategy.start``), long enough for a simulated round of any size.
    resume : bool (default: False)
        Start from the last complete round saved in the run folder instead of round 1.
    """

    min_clients: int = 1
    round_timeout_s: float = 3600.0
    resume: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.min_clients, bool) or not isinstance(self.min_clients, int) or self.min_clients < 1:
            raise ConfigError(f"min_clients must be an int >= 1, got {self.min_clients!r}")
        timeout = self.round_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout):
            raise ConfigError(f"round_timeout_s must be a finite number, got {timeout!r}")
        if timeout <= 0:
            raise ConfigError(f"round_timeout_s must be > 0, got {timeout}")
        if not isinstance(self.resume, bool):
            raise ConfigError(f"resume must be true or false, got {self.resume!r}")

    def to_run_config(self) -> dict[str, int | float | bool]:
        """The policy as Flower run config scalars."""
        return {
            MIN_CLIENTS_KEY: self.min_clients,
            ROUND_TIMEOUT_KEY: float(self.round_timeout_s),
            RESUME_KEY: self.resume,
        }

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> RoundPolicy:
        """Read the policy from a run config; missing keys take the defaults, bad values raise ``ConfigError``."""
        default = cls()
        timeout = run_config.get(ROUND_TIMEOUT_KEY, default.round_timeout_s)
        if isinstance(timeout, int) and not isinstance(timeout, bool):
            timeout = float(timeout)  # TOML writes 30.0 as 30 when a person types it
        try:
            return cls(
                min_clients=run_config.get(MIN_CLIENTS_KEY, default.min_clients),  # type: ignore[arg-type]
                round_timeout_s=timeout,  # type: ignore[arg-type]
                resume=run_config.get(RESUME_KEY, default.resume),  # type: ignore[arg-type]
            )
        except ConfigError as err:  # named as the user wrote it, in the run config
            field, _, rest = str(err).partition(" ")
            key = {"min_clients": MIN_CLIENTS_KEY, "round_timeout_s": ROUND_TIMEOUT_KEY}.get(field, field)
            raise ConfigError(f"run config {key} {rest}") from err

    def check_quorum(self, server_round: int, answered: int, asked: int) -> None:
        """Raise :class:`QuorumError` if fewer than ``min_clients`` of the ``asked`` clients answered.

        Clients sampled but not known (their node never said hello) are not asked, and so count as silent.
        """
        if not asked:
            raise QuorumError(
                f"round {server_round}: no node holds a sampled client (no node identified itself with a partition "
                f"the server accepts; the server log says why each was left out), fewer than "
                f"min_clients={self.min_clients}"
            )
        if answered < self.min_clients:
            raise QuorumError(
                f"round {server_round}: {answered} of {asked} asked clients answered within "
                f"{self.round_timeout_s:g} s, fewer than min_clients={self.min_clients}"
            )
