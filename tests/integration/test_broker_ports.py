"""The test broker's ports: chosen free, but a parallel worker may bind one first."""

from __future__ import annotations

import socket

from lab.broker import MosquittoBroker
from tests.integration.conftest import BrokerFactory


def test_a_port_taken_before_the_first_start_moves_the_broker_to_free_ones(
    broker_factory: BrokerFactory,
) -> None:
    broker: MosquittoBroker = broker_factory(start=False)
    taken = broker.info.collector_port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", taken))
        squatter.listen(1)
        info = broker.start()
        assert info.collector_port != taken
        assert broker.running
    # a restart keeps the ports the clients already know
    moved = broker.info
    broker.restart()
    assert (broker.info.probe_port, broker.info.collector_port) == (
        moved.probe_port, moved.collector_port)
