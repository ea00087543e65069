"""FedAvg's server when every client trains the server model: the same averaging, another compute cost."""

from __future__ import annotations

from fl_kd.kd.fedavg.roles import FedAvgServer


class ServerModelFedAvgServer(FedAvgServer):
    """FedAvg of the server model; every client's device cost is counted for that model, not its tier's."""

    def client_model(self, client_id: int) -> str | None:
        """The server model, which every client trains."""
        return self.architecture
