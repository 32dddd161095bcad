"""Raw packets, kept out of the long-running agent.

The agent never opens a raw socket and never imports scapy.  A small separate process
(``agent.net.rawprobe.server``, run with only ``CAP_NET_RAW``) captures packet headers and sends
TTL-limited probes; the agent talks to it over a narrow JSON-lines interface
(``agent.net.rawprobe.client``).  ``records`` is the typed form of what crosses that interface.
"""
