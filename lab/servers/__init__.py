"""Processes the lab runs inside its namespaces (DNS, web, on-path injector, guard).

Each one is started as ``ip netns exec <ns> python -m lab.servers.<name> CONFIG.json``,
writes its ready file once listening, and exits by itself when its owner dies or its lifetime
ends (see ``common.Lifetime``), so a crashed test run cannot leave servers behind for long.
"""
